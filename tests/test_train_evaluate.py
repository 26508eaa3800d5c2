import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import losh.training.loop as train_module
from losh.cli.main import app
from losh.data.dataset import ClipDataset, RVOSDataset
from losh.evaluation.evaluate import trivial_baselines
from losh.evaluation.frame_metrics import METRIC_KEYS
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.checkpoint import load_checkpoint
from losh.training.loop import NonFiniteLoss, RunExists, train

CONFIG = get_config("tiny:wo-fbc")   # flows are tested with compute-flows; here the loop itself


def settings(**kw):
    base = dict(epochs=2, batch_size=2, num_workers=0, log_every_steps=1, amp="off", lr_milestones=(1,),
                deterministic=True)
    base.update(kw)
    return TrainSettings(**base)


def weights(path):
    return load_checkpoint(path)["model"]


def test_training_writes_log_and_checkpoint_and_resume_continues_the_same_run(prepared, tmp_path):
    full = train(prepared, CONFIG, tmp_path / "full", settings(), progress=False)
    assert full["epochs"] == 2 and full["steps"] > 2
    log = [json.loads(line) for line in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert {"loss", "loss_dice_long", "loss_lsi", "lr"} <= set(log[0])
    assert [e["epoch_end"] for e in log if "epoch_end" in e] == [1, 2]
    assert log[-2]["lr"] == pytest.approx(1e-4 * 0.4)          # milestone at epoch 1, gamma 0.4
    ckpt = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "model_config", "train_settings"} <= set(ckpt)

    # the same run, interrupted after the first epoch and resumed
    half = train(prepared, CONFIG, tmp_path / "split", settings(epochs=1), progress=False)
    assert half["epochs"] == 1
    with pytest.raises(RunExists):
        train(prepared, CONFIG, tmp_path / "split", settings(), progress=False)
    resumed = train(prepared, CONFIG, tmp_path / "split", settings(), resume=True, progress=False)
    assert resumed["steps"] == full["steps"]
    a, b = weights(tmp_path / "full/checkpoints/last.pt"), weights(tmp_path / "split/checkpoints/last.pt")
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k


def test_weight_average_is_saved_resumed_and_evaluated(prepared, tmp_path):
    from losh.training.checkpoint import load_model
    full = train(prepared, CONFIG, tmp_path / "full", settings(ema_decay=0.9), progress=False)
    ckpt = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    assert ckpt["model_ema"]["updates"] == full["steps"] and ckpt["model_ema"]["decay"] == 0.9
    key = "is_referred_head.weight"
    assert not torch.equal(ckpt["model_ema"]["weights"][key], ckpt["model"][key])
    # interrupted and resumed: the same average
    train(prepared, CONFIG, tmp_path / "split", settings(epochs=1, ema_decay=0.9), progress=False)
    train(prepared, CONFIG, tmp_path / "split", settings(ema_decay=0.9), resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "split/checkpoints/last.pt")["model_ema"]
    assert resumed["updates"] == full["steps"]
    assert torch.equal(resumed["weights"][key], ckpt["model_ema"]["weights"][key])
    # evaluation uses the average unless told otherwise
    averaged, _ = load_model(tmp_path / "full/checkpoints/last.pt", torch.device("cpu"))
    trained, _ = load_model(tmp_path / "full/checkpoints/last.pt", torch.device("cpu"), use_ema=False)
    assert torch.equal(averaged.state_dict()[key], ckpt["model_ema"]["weights"][key])
    assert torch.equal(trained.state_dict()[key], ckpt["model"][key])
    result = CliRunner().invoke(app, ["evaluate", "--data", str(prepared), "--checkpoint",
                                      str(tmp_path / "full/checkpoints/last.pt"), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "moving average" in result.output and json.loads((tmp_path / "m.json").read_text())["weights"] == "ema"
    result = CliRunner().invoke(app, ["evaluate", "--data", str(prepared), "--checkpoint",
                                      str(tmp_path / "full/checkpoints/last.pt"), "--no-ema"])
    assert result.exit_code == 0 and "moving average" not in result.output


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(prepared, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(prepared, CONFIG, out, settings(epochs=1), progress=False)
    before = weights(out / "checkpoints/last.pt")
    real = train_module.forward_and_loss

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(train_module, "forward_and_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at epoch 2, step 1"):
        train(prepared, CONFIG, out, settings(epochs=2), resume=True, progress=False)
    after = weights(out / "checkpoints/last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor))


def test_cli_train_then_evaluate_writes_metrics_predictions_and_pictures(prepared, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(prepared), "--out", str(run), "--config", "tiny:wo-fbc",
                                 "--epochs", "1", "--batch-size", "2", "--workers", "0", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    result = runner.invoke(app, ["evaluate", "--data", str(prepared), "--checkpoint", str(run / "checkpoints/last.pt"),
                                 "--out", str(run / "metrics.json"), "--save-predictions", str(run / "pred"),
                                 "--visualize", "2", "--baselines"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics) and metrics["split"] == "test"
    assert set(metrics["baselines"]) == {"empty_mask_mean_iou", "full_frame_mean_iou", "untrained_model_mean_iou"}
    assert len(list((run / "pictures").glob("*.png"))) == 2
    # the saved predictions score exactly as the model did
    result = runner.invoke(app, ["evaluate", "--data", str(prepared), "--predictions", str(run / "pred"),
                                 "--out", str(run / "rescored.json")])
    assert result.exit_code == 0, result.output
    rescored = json.loads((run / "rescored.json").read_text())
    for key in ("overall_iou", "mean_iou", "j", "f"):
        assert rescored[key] == pytest.approx(metrics[key])


def test_paper_config_without_weights_says_what_to_provide(prepared, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "r"),
                                      "--config", "losh-m:wo-fbc", "--max-steps", "1", "--workers", "0"])
    assert result.exit_code == 1
    assert "weights" in result.output.lower()


def test_trivial_baselines(prepared):
    b = trivial_baselines(prepared)
    assert b["empty_mask_mean_iou"] == 0.0 and 0 < b["full_frame_mean_iou"] < 0.5


def test_training_with_flows_uses_the_forward_backward_consistency_loss(prepared_with_flows, tmp_path):
    summary = train(prepared_with_flows, get_config("tiny"), tmp_path / "run", settings(epochs=1, max_steps=2),
                    progress=False)
    assert summary["steps"] == 2
    assert summary["last_losses"]["loss_fbc"] > 0


def test_training_with_fbc_and_no_flows_says_to_compute_them(prepared, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "r"),
                                      "--config", "tiny", "--max-steps", "1", "--workers", "0"])
    assert result.exit_code == 1
    assert "compute-flows" in result.output


def test_presets_train_on_the_short_text_the_data_holds_and_the_run_records_it(prepared, tmp_path):
    """The presets take the prepared data's short text (manual here) and write which into the run's config; an
    explicit source (`:msh`, the ablation's machine short text) must match the data."""
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "r"),
                                      "--config", "tiny:msh", "--max-steps", "1", "--workers", "0"])
    assert result.exit_code == 1
    assert "trains on machine short text, but the data holds manual short text" in result.output
    assert get_config("tiny").short_text_source == "data"
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "ok"), "--config",
                                      "tiny:wo-fbc", "--max-steps", "1", "--epochs", "1", "--workers", "0",
                                      "--amp", "off"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["short_text_source"] == "manual"
    assert load_checkpoint(tmp_path / "ok/checkpoints/last.pt")["model_config"]["short_text_source"] == "manual"


@pytest.mark.parametrize("expressions_per_clip", [1, 3])
def test_torchrun_with_two_processes_shards_the_data_and_trains_one_model(prepared, tmp_path, expressions_per_clip):
    """The multi-GPU command on the CPU: torchrun, DDP over gloo, a DistributedSampler per rank (over
    samples, or over clips with their expressions)."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "losh.cli.main", "train", "--data", str(prepared), "--out", str(run), "--config", "tiny:wo-fbc",
           "--epochs", "1", "--batch-size", "1", "--expressions-per-clip", str(expressions_per_clip),
           "--workers", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    items = len(RVOSDataset(prepared, "train") if expressions_per_clip == 1 else
                ClipDataset(prepared, "train", max_expressions=expressions_per_clip))
    ckpt = load_checkpoint(run / "checkpoints/last.pt")
    # each rank sees half of the epoch (DistributedSampler), one optimiser step per rank batch
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == -(-items // 2)
    ends = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "epoch_end" in line]
    assert len(ends) == 1                     # only rank 0 writes the log
    assert not any(k.startswith("module.") for k in ckpt["model"])   # the unwrapped model is saved
