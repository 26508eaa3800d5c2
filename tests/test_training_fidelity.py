"""Training as the paper and MTTR define it, at real scale: flip words, the mask count across processes,
settings on resume, non-finite predictions, validation with best.pt, checkpoints without weight files."""
import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from losh.cli.main import app
from losh.data.dataset import swap_left_right
from losh.evaluation.evaluate import evaluate_checkpoint
from losh.models.losh_m.criterion import average_over_processes
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.checkpoint import load_checkpoint
from losh.training.loop import SettingsChanged, train

CONFIG = get_config("tiny:wo-fbc")


def settings(**kw):
    base = dict(epochs=2, batch_size=2, num_workers=0, log_every_steps=1, amp="off", lr_milestones=(1,),
                deterministic=True)
    base.update(kw)
    return TrainSettings(**base)


def test_flip_swaps_every_word_built_on_left_and_right():
    assert swap_left_right("the leftmost dog, moving Rightwards") == "the rightmost dog, moving Leftwards"
    assert swap_left_right("a left-hand man and a RIGHTMOST car") == "a right-hand man and a LEFTMOST car"
    assert swap_left_right("bright lights, lefty, righteous") == "bright lights, lefty, righteous"


def _average_in_process(rank: int, port: int, counts: list[int], out: "mp.Queue") -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(counts))
    try:
        out.put((rank, average_over_processes(counts[rank], torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_mask_count_is_averaged_across_processes_as_detr():
    assert average_over_processes(0, torch.device("cpu")) == 1.0        # one process: at least 1
    assert average_over_processes(5, torch.device("cpu")) == 5.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    counts = [3, 8]
    procs = [ctx.Process(target=_average_in_process, args=(r, port, counts, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: 5.5, 1: 5.5}                                  # (3 + 8) / 2 on both ranks


def test_resume_refuses_changed_settings_and_logs_the_safe_ones(prepared, tmp_path):
    run = tmp_path / "run"
    train(prepared, CONFIG, run, settings(epochs=1), progress=False)
    with pytest.raises(SettingsChanged, match=r"lr 0.0001 -> 0.0002.*batch_size 2 -> 3|batch_size 2 -> 3.*lr"):
        train(prepared, CONFIG, run, settings(epochs=2, lr=2e-4, batch_size=3), resume=True, progress=False)
    summary = train(prepared, CONFIG, run, settings(epochs=2, log_every_steps=5), resume=True, progress=False)
    assert summary["epochs"] == 2
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumes = [line["resume"] for line in lines if "resume" in line]
    assert resumes == [{"epoch": 1, "step": resumes[0]["step"], "changed": {"epochs": [1, 2], "log_every_steps": [1, 5]}}]


def test_cli_resume_starts_from_the_runs_settings(prepared, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    common = ["train", "--data", str(prepared), "--out", str(run), "--config", "tiny:wo-fbc", "--workers", "0",
              "--batch-size", "2"]
    assert runner.invoke(app, [*common, "--epochs", "1", "--lr", "3e-4", "--max-steps", "2"]).exit_code == 0
    # nothing but the length given: the run's lr 3e-4 is kept, not the default 1e-4
    result = runner.invoke(app, [*common, "--resume", "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints/last.pt")["train_settings"]["lr"] == 3e-4
    result = runner.invoke(app, [*common, "--resume", "--lr", "1e-3"])
    assert result.exit_code == 1 and "lr 0.0003 -> 0.001" in result.output


def test_nan_predictions_at_the_matcher_stop_with_exit_code_3_and_the_terms(prepared, tmp_path, monkeypatch):
    import losh.models.losh_m.model as losh_module

    real_run = losh_module.LoShM._run

    def poisoned(self, *args, **kwargs):
        out = real_run(self, *args, **kwargs)
        out["long"]["pred_masks"] = out["long"]["pred_masks"] * float("nan")
        return out

    monkeypatch.setattr(losh_module.LoShM, "_run", poisoned)
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "r"),
                                      "--config", "tiny:wo-fbc", "--max-steps", "1", "--workers", "0"])
    assert result.exit_code == 3, result.output
    assert "non-finite loss" in result.output and "non_finite_long_pred_masks" in result.output
    assert "samples [" in result.output


def test_validation_during_training_keeps_the_best_checkpoint(prepared, tmp_path):
    run = tmp_path / "run"
    summary = train(prepared, CONFIG, run, settings(epochs=2, eval_every=1, eval_samples=5), progress=False)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["eval"]["epoch"] for e in evals] == [1, 2]
    assert all(e["eval"]["samples"] == 5 and 0 <= e["eval"]["mean_iou"] <= 1 for e in evals)
    values = [e["eval"]["mean_iou"] for e in evals]
    best = summary["best"]
    assert best["metric"] == "mean_iou" and best["value"] == max(values)
    assert best["epoch"] == 1 + values.index(max(values))
    best_ckpt = load_checkpoint(run / "checkpoints/best.pt")
    assert best_ckpt["epoch"] == best["epoch"] and best_ckpt["best"] == best
    # the best checkpoint scores what was logged for it
    again = evaluate_checkpoint(prepared, run / "checkpoints/best.pt", progress=False, max_samples=5)
    assert again["mean_iou"] == pytest.approx(best["value"], abs=1e-6)


def test_evaluate_and_resume_do_not_need_the_backbone_weights_file(prepared, tmp_path):
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    weights = tmp_path / "swin.pth"
    b = CONFIG.backbone
    torch.save(SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=b.embed_dim, depths=list(b.depths),
                                 num_heads=list(b.num_heads), window_size=list(b.window_size),
                                 num_classes=400).state_dict(), weights)        # torchvision's layout
    config = with_overrides(CONFIG, {"backbone.weights": str(weights), "backbone.require_weights": True})
    run = tmp_path / "run"
    train(prepared, config, run, settings(epochs=1, max_steps=1), progress=False)
    weights.unlink()                                    # gone, as on another machine
    evaluate_checkpoint(prepared, run / "checkpoints/last.pt", progress=False, max_samples=3)
    summary = train(prepared, config, run, settings(epochs=1, max_steps=2), resume=True, progress=False)
    assert summary["steps"] == 2


def test_inference_runs_the_taggers_short_text_even_on_manually_prepared_data(prepared, monkeypatch):
    from losh.data.dataset import RVOSDataset
    from losh.evaluation.evaluate import evaluate_model
    from losh.models.registry import build_model
    from losh.pipeline.shorten import Shortener

    torch.manual_seed(0)
    model = build_model(CONFIG)                       # tiny: cross-attention, inference_short_pathway "encoder"
    seen = []
    infer = model.infer
    monkeypatch.setattr(model, "infer", lambda frames, long, short, **kw: seen.extend(short) or infer(frames, long, short, **kw))
    result = evaluate_model(model, prepared, max_samples=6, resolution="prepared", progress=False)
    records = RVOSDataset(prepared, "test", max_samples=6).data.records
    # the data holds manual short text (an annotation a test set does not have): the tagger's is used instead
    assert sorted(seen) == sorted(Shortener("spacy", "subject").shorten_many([r.long for r in records]))
    assert result["inference_short_text"] == "machine (spacy/subject, from the long expressions)"
    seen.clear()
    model.config = with_overrides(CONFIG, {"inference_short_pathway": "none"})
    assert evaluate_model(model, prepared, max_samples=6, resolution="prepared",
                          progress=False)["inference_short_text"] is None
