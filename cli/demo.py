"""`make demo`: the whole pipeline on a synthetic data set, on the CPU, left in ./demo/.

synth -> prepare-data -> compute-flows -> train (tiny-s, LoSh-S's classes in small dims) -> evaluate, then the
model scored on a synthetic JHMDB-Sentences set (cross-data-set, as the paper). Each stage is the same `losh`
command a user runs, so the demo shows how to use the tool; every stage is resumable, so a second
`make demo` reuses what the first one finished (training resumes or is skipped when complete).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from losh.schemas.atomic import atomic_write_json
from losh.schemas.config import load_config, save_config, with_overrides
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings

DEMO_VIDEOS = 120
JHMDB_VIDEOS = 24        # scored only: 72 samples
FRAME_SIZE = (128, 176)   # small frames keep the CPU demo within minutes
# 5-frame windows (the paper's A2D setting is 8): a CPU step of tiny cost half as much (the Swin window attention
# dominated), so the demo trains twice the steps in its budget; L_fbc's offsets -2..+2 still fit
DEMO_WINDOW = 5
# The demo's model: the tiny-s preset (LoSh-S: deformable transformer, SCF, dynamic mask head) with the machine
# short text of the subject rule (":msh-subject", prepare-data's default), a Swin window of 4 x 4 patches and
# 2 + 2 transformer layers instead of 4 + 4. Measured on this CPU (docs/experiments/2026-11-26-demo-recipe.md):
# tiny-s learns the demo's data in under half the steps tiny needs, and 2 + 2 layers make its step 1.6x cheaper
# (each decoder layer's masks and losses are at full resolution)
DEMO_BASE_CONFIG = "tiny-s:msh-subject"
DEMO_CONFIG_OVERRIDES = {"window": DEMO_WINDOW, "backbone.window_size": (8, 4, 4),
                         "transformer.num_encoder_layers": 2, "transformer.num_decoder_layers": 2}
# Training runs as two single-threaded processes (DDP over gloo, one clip each a step): a small model's ops
# share two threads poorly (a clip step of the demo's model: 0.36-0.40 s on 1 thread, 0.27-0.28 s on 2), so
# two processes train 2 clips in 0.49 s against ~0.55 s for one process of 2 threads. Fixed at 2 so that the
# recipe (2 clips a step) is the same on every machine.
DEMO_PROCESSES = 2
# The demo's training settings, written to demo/train.json and passed as `--settings` (docs/demo-recipes.md
# has the measurements behind them). An item is one clip with its expressions (3.1 on average, up to 4): the
# backbone runs once for all of them; each process takes one clip a step. The model is randomly initialised:
# backbone and transformer share a 3x higher lr than the paper's fine-tuning. A moving average of the weights
# (decay 0.999, warmed up over the first steps) is what evaluate scores, for about 1 ms a step.
# 7 epochs of 2 clips a step (833 steps, ~7 min of this machine) keep the whole demo within 10 minutes.
TRAIN_SETTINGS = TrainSettings(epochs=7, batch_size=1, expressions_per_clip=4, num_workers=1, lr=3e-4,
                               backbone_lr=3e-4, lr_milestones=(6,), ema_decay=0.999)


def run(args: list[str], processes: int = 1) -> None:
    """`losh ARGS` as a user types it; with `processes` > 1 under torchrun (single-node, CPU: DDP over gloo)."""
    env = None
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        cmd = [*launcher, "-m", "losh.cli.main", *args]
        threads = max(1, (os.cpu_count() or 1) // processes)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        print(f"\n$ OMP_NUM_THREADS={threads} torchrun --standalone --nproc-per-node={processes} -m losh.cli.main "
              f"{shlex.join(args)}", flush=True)
    else:
        cmd = [sys.executable, "-m", "losh.cli.main", *args]
        print(f"\n$ losh {shlex.join(args)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, env=env)
    print(f"  ({time.time() - start:.1f} s)", flush=True)


def same_recipe(run_dir: Path, config, settings: TrainSettings) -> bool:
    """Whether the run in `run_dir` was trained with this config and these settings (how many epochs aside:
    a longer demo resumes a shorter one)."""
    try:
        earlier = TrainSettings.from_dict(json.loads((run_dir / "train.json").read_text()))
        same_config = load_config(run_dir / "config.json").training_part() == config.training_part()
        return same_config and replace(earlier, epochs=settings.epochs) == settings
    except (OSError, ValueError):
        return False


def demo_video(raw: Path, expressions: int = 3) -> tuple[Path, list[str]]:
    """The first test video of the synthetic A2D root with (up to) its first expressions."""
    import csv

    with open(raw / "Release" / "videoset.csv", newline="") as f:
        test = [row[0] for row in csv.reader(f) if row and row[-1].strip() == "1"]
    with open(raw / "text_annotations" / "a2d_annotation.txt", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["video_id"] == test[0]]
    return raw / "Release" / "clips320H" / f"{test[0]}.mp4", [r["query"] for r in rows[:expressions]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--epochs", type=int, default=TRAIN_SETTINGS.epochs)
    args = parser.parse_args(argv)
    out: Path = args.out
    raw, prep, run_dir = out / "raw", out / "prep", out / "run"
    evaluation, long_only_evaluation, jhmdb_evaluation = out / "eval", out / "eval-long-only", out / "eval-jhmdb"
    config_file, settings_file = out / "tiny-s.json", out / "train.json"
    h, w = FRAME_SIZE
    start = time.time()
    try:
        if not (raw / "Release" / "videoset.csv").exists():
            run(["synth", "--out", str(raw), "--videos", str(DEMO_VIDEOS), "--seed", "0", "--height", str(h),
                 "--width", str(w)])
        run(["prepare-data", "--dataset", "a2d", "--root", str(raw), "--out", str(prep),
             "--short-side", str(h), "--max-long-side", str(w), "--window", str(DEMO_WINDOW)])
        run(["compute-flows", "--data", str(prep)])
        # a config file: the tiny-s:msh-subject preset with the demo's overrides (what `losh train --config` reads;
        # the machine short text of prepare-data's default subject rule, named in the config),
        # and a settings file (`--settings`)
        config = with_overrides(get_config(DEMO_BASE_CONFIG), DEMO_CONFIG_OVERRIDES)
        save_config(config, config_file)
        settings = replace(TRAIN_SETTINGS, epochs=args.epochs)
        atomic_write_json(settings_file, settings.to_dict())
        if (run_dir / "config.json").exists() and not same_recipe(run_dir, config, settings):
            # a run of an earlier demo with another recipe cannot be resumed: keep it aside, start afresh
            aside = run_dir.with_name(f"run.earlier-{int(time.time())}")
            run_dir.rename(aside)
            print(f"{run_dir} was trained with another config or settings; moved to {aside}", flush=True)
        resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").exists() else []
        run(["train", "--data", str(prep), "--out", str(run_dir), "--config", str(config_file),
             "--settings", str(settings_file), *resume], processes=DEMO_PROCESSES)
        run(["evaluate", "--data", str(prep), "--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
             "--out", str(evaluation), "--overwrite", "--save-predictions", str(evaluation / "predictions"),
             "--visualize", "8", "--baselines",
             "--inference-short-pathway", "encoder"])   # the default, said: a run of an older demo may hold "none"
        # the other reading of the paper's inference (3.8): the long pathway alone, without the short text
        run(["evaluate", "--data", str(prep), "--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
             "--out", str(long_only_evaluation), "--overwrite", "--inference-short-pathway", "none"])
        # JHMDB-Sentences as the paper scores it: the A2D model on another data set, without training on it
        jhmdb_raw, jhmdb_prep = out / "jhmdb_raw", out / "jhmdb_prep"
        if not (jhmdb_raw / "jhmdb_annotation.txt").exists():
            run(["synth", "--out", str(jhmdb_raw), "--layout", "jhmdb", "--videos", str(JHMDB_VIDEOS), "--seed", "1",
                 "--height", str(h), "--width", str(w)])
        run(["prepare-data", "--dataset", "jhmdb", "--root", str(jhmdb_raw), "--out", str(jhmdb_prep),
             "--short-side", str(h), "--max-long-side", str(w), "--window", str(DEMO_WINDOW),
             "--samples-metadata", "seed", "--seed", "0"])   # synthetic videos: 3 frames each drawn, as MTTR's
        run(["evaluate", "--data", str(jhmdb_prep), "--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
             "--out", str(jhmdb_evaluation), "--overwrite", "--baselines", "--inference-short-pathway", "encoder"])
        # a user's view: the model on one whole test video, every frame, its expressions in colour
        video, texts = demo_video(raw)
        run(["predict", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--video", str(video),
             "--out", str(out / "predict"), "--overwrite", *[a for t in texts for a in ("--text", t)]])
    except subprocess.CalledProcessError as e:
        shown = e.cmd[e.cmd.index("losh.cli.main") + 1:] if "losh.cli.main" in e.cmd else e.cmd
        print(f"demo stopped: `losh {shlex.join(shown)}` exited with {e.returncode}", file=sys.stderr)
        return e.returncode
    manifest = json.loads((prep / "manifest.json").read_text())
    metrics = json.loads((evaluation / "metrics.json").read_text())
    c = manifest["counts"]
    print(f"\nDemo finished in {time.time() - start:.0f} s. Data: {c['samples']} samples ({c['samples_train']} train, "
          f"{c['samples_test']} test), {c['merged_short_masks']} with a merged short mask; short text by "
          f"{manifest['short_text']['tagger']}/{manifest['short_text']['rule']}.")
    print(f"Test mean IoU {100 * metrics['mean_iou']:.1f}%, overall IoU {100 * metrics['overall_iou']:.1f}%, "
          f"mAP {100 * metrics['map']:.1f}%. Metrics: {evaluation / 'metrics.json'}; pictures: "
          f"{evaluation / 'pictures'}; predicted masks: {evaluation / 'predictions'}; run: {run_dir}")
    long_only = json.loads((long_only_evaluation / "metrics.json").read_text())
    print(f"Inference with the tagger's short text through the encoder (above): mean IoU "
          f"{100 * metrics['mean_iou']:.1f}%; with the long pathway alone: {100 * long_only['mean_iou']:.1f}% "
          f"({long_only_evaluation / 'metrics.json'}).")
    jhmdb = json.loads((jhmdb_evaluation / "metrics.json").read_text())
    print(f"The same model on a synthetic JHMDB-Sentences set ({jhmdb['samples']} samples, 3 frames a video, not "
          f"trained on): mean IoU {100 * jhmdb['mean_iou']:.1f}%, overall IoU {100 * jhmdb['overall_iou']:.1f}%, "
          f"mAP {100 * jhmdb['map']:.1f}% (empty mask {100 * jhmdb['baselines']['empty_mask_mean_iou']:.1f}%, full "
          f"frame {100 * jhmdb['baselines']['full_frame_mean_iou']:.1f}%; {jhmdb_evaluation / 'metrics.json'}).")
    print(f"Every frame of one test video with its expressions, each in its own colour: "
          f"{out / 'predict' / 'overlay.mp4'} (preview {out / 'predict' / 'overlay.gif'}; masks and "
          f"predictions.json in {out / 'predict'}).")
    b = metrics.get("baselines", {})
    if b:
        print(f"Baselines (test mean IoU): empty mask {100 * b['empty_mask_mean_iou']:.1f}%, full frame "
              f"{100 * b['full_frame_mean_iou']:.1f}%, untrained model {100 * b['untrained_model_mean_iou']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
