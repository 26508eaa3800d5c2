"""Watching a run: TensorBoard events read back as TensorBoard reads them (complete, strictly increasing steps,
also after a run killed past its checkpoint and resumed), a run without the tensorboard package, and
`losh runs compare` on two tiny runs of different configs."""
import json
import re
import shutil
import sys

import pytest
from typer.testing import CliRunner

import losh.training.tensorboard_log as tensorboard_log
from losh.cli.main import app
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.loop import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CONFIG = get_config("tiny:wo-fbc")
# 6 training samples, 2 a batch: 3 steps an epoch; the losses every 2 steps (2, 4, 6: across the epochs' end);
# a validation (2 samples) each epoch
BASE = dict(batch_size=2, num_workers=0, log_every_steps=2, amp="off", eval_every=1, lr_milestones=(1,))
STEPS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small synthetic A2D-Sentences set, prepared: 6 training samples, 2 test samples, 48 x 64 frames."""
    from losh.pipeline.prepare import PrepareSettings, prepare_a2d
    from losh.pipeline.synth import write_synthetic_a2d

    root = tmp_path_factory.mktemp("small")
    write_synthetic_a2d(root / "raw", videos=4, seed=3, height=48, width=64, frames=12, annotated_per_video=1,
                        progress=False)
    prepare_a2d(root / "raw", root / "prep", short_source="manual", workers=1, progress=False,
                settings=PrepareSettings(window=8, short_side=48, max_long_side=64, decoder="opencv"))
    return root / "prep"


def events(run) -> EventAccumulator:
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in accumulator.Scalars(tag)]


@pytest.fixture(scope="module")
def watched(small, tmp_path_factory):
    """A run trained 1 epoch, then resumed to 2; and a copy of its checkpoint after the first epoch."""
    root = tmp_path_factory.mktemp("watched")
    run = root / "run"
    train(small, CONFIG, run, TrainSettings(epochs=1, **BASE), progress=False)
    shutil.copy(run / "checkpoints" / "last.pt", root / "after-epoch-1.pt")
    train(small, CONFIG, run, TrainSettings(epochs=2, **BASE), resume=True, progress=False)
    return run, root / "after-epoch-1.pt"


def check_complete(run) -> EventAccumulator:
    accumulator = events(run)
    tags = set(accumulator.Tags()["scalars"])
    losses = {"loss/total", "loss/dice_long", "loss/focal_long", "loss/is_referred_long", "loss/dice_short",
              "loss/lsi"}
    assert losses <= tags, tags
    assert {"lr/rest", "train/grad_norm", "train/clips_per_s", "train/data_wait_share"} <= tags, tags
    logged = list(range(2, 2 * STEPS_PER_EPOCH + 1, BASE["log_every_steps"]))    # 2, 4, 6
    for tag in sorted(losses) + ["lr/rest", "train/grad_norm", "train/clips_per_s"]:
        assert steps(accumulator, tag) == logged, tag       # strictly increasing, no duplicate, none missing
    epoch_ends = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert steps(accumulator, "val/mean_iou") == epoch_ends and steps(accumulator, "val/overall_iou") == epoch_ends
    assert [e.step for e in accumulator.Images("val/overlays")] == epoch_ends
    assert all(0 <= e.value <= 1 for e in accumulator.Scalars("train/data_wait_share"))
    assert all(e.value > 0 for e in accumulator.Scalars("train/grad_norm"))
    return accumulator


def test_a_resumed_run_reads_back_complete_with_strictly_increasing_steps(watched):
    run, _ = watched
    accumulator = check_complete(run)
    # the same values as metrics.jsonl, its machine-readable twin (unchanged: no TensorBoard-only keys)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "loss" in line and "step" in line]
    assert [line["step"] for line in logged] == steps(accumulator, "loss/total")
    assert [e.value for e in accumulator.Scalars("loss/total")] == pytest.approx([line["loss"] for line in logged])
    assert [e.value for e in accumulator.Scalars("lr/rest")] == pytest.approx([line["lr"] for line in logged])
    assert not any("grad_norm" in line or "mean_grad_norm" in line for line in lines)
    picture = accumulator.Images("val/overlays")[0]
    assert picture.width > picture.height > 0          # four panels a row


def test_a_run_killed_past_its_checkpoint_resumes_without_duplicate_steps(watched, small, tmp_path):
    """Events of epoch 2 were written, then the process died before its checkpoint: the resumed run trains
    epoch 2 again, and what the dead one wrote past the checkpoint is purged."""
    run, after_epoch_1 = watched
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    shutil.copy(after_epoch_1, killed / "checkpoints" / "last.pt")
    train(small, CONFIG, killed, TrainSettings(epochs=2, **BASE), resume=True, progress=False)
    assert len(list((killed / "tensorboard").glob("events.out.tfevents.*"))) == 3
    check_complete(killed)


def test_without_tensorboard_the_run_goes_on_and_says_once_how_to_add_it(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # as if not installed
    monkeypatch.setattr(tensorboard_log, "_said_missing", False)
    said = []
    args = ["train", "--data", str(small), "--out", str(tmp_path / "run"), "--config", "tiny:wo-fbc",
            "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--amp", "off"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("pip install 'losh[tensorboard]'") == 1
    # the epoch's progress as a log shows it (stderr is not a terminal here): a line, where the step limit stopped it
    assert re.search(r"^epoch 1/70: +33% 1/3 batch \[", result.output, re.M) and "\r" not in result.output
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "metrics.jsonl").is_file()
    assert tensorboard_log.open_tensorboard(tmp_path / "other", "tensorboard", 0, said.append) is None
    assert said == []                                                     # once a process


def test_runs_compare_shows_final_and_best_metrics_and_only_the_settings_that_differ(watched, small, tmp_path):
    run_a, _ = watched
    run_b = tmp_path / "lsi"
    result = CliRunner().invoke(app, ["train", "--data", str(small), "--out", str(run_b), "--config", "tiny:wo-fbc",
                                      "--set", "loss.lsi=2.5", "--epochs", "1", "--batch-size", "2", "--workers", "0",
                                      "--amp", "off", "--eval-every", "1", "--log", "none", "--lr-milestones", "1",
                                      "--log-every", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not (run_b / "tensorboard").exists() and "epoch 1/1" not in result.output and "evaluate" not in result.output
    out = tmp_path / "compare.json"
    result = CliRunner().invoke(app, ["runs", "compare", str(run_a), str(run_b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert table["runs"] == ["run", "lsi"]
    rows = {row["what"]: row["values"] for row in table["rows"]}
    assert rows["steps"] == [6, 3] and rows["epochs"] == [2, 1] and rows["validations"] == [2, 1]
    assert rows["loss.lsi"] == [CONFIG.loss.lsi, 2.5] and rows["train.epochs"] == [2, 1]
    assert rows["train.log"] == ["tensorboard", "none"]
    assert "window" not in rows and "train.lr" not in rows              # equal in both: left out
    evals_a = [json.loads(line)["eval"] for line in (run_a / "metrics.jsonl").read_text().splitlines()
               if '"eval"' in line]
    assert rows["final mean_iou"][0] == pytest.approx(evals_a[-1]["mean_iou"])
    assert rows["best mean_iou"][0] == pytest.approx(max(e["mean_iou"] for e in evals_a))
    assert all(v > 0 for v in rows["wall time (s)"])
    text = result.output
    assert "loss.lsi" in text and f"{100 * evals_a[-1]['mean_iou']:.2f}" in text
    for suffix in (".md", ".csv"):
        written = tmp_path / f"compare{suffix}"
        compared = CliRunner().invoke(app, ["runs", "compare", str(run_a), str(run_b), "--out", str(written)])
        assert compared.exit_code == 0, compared.output
        assert "loss.lsi" in written.read_text()
    refused = CliRunner().invoke(app, ["runs", "compare", str(run_a), str(tmp_path)])
    assert refused.exit_code == 1 and "no metrics.jsonl" in refused.output
