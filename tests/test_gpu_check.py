"""`make gpu-check` in its CPU dry run: every part's code path runs, the JSON says what happened.

The run imports none of the packages the GPU machine lacks: a `sitecustomize` makes importing them
fail in every process of the run (pytest, the parts, torchrun's workers).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import make_plan, run_check, run_isolated

ROOT = Path(__file__).resolve().parents[1]
MISSING_ON_GPU_MACHINE = ("spacy", "nltk", "dask", "distributed", "pycocotools", "av", "en_core_web_sm")
BLOCKER = f"""
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {MISSING_ON_GPU_MACHINE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU machine)")
sys.meta_path.insert(0, _Missing())
"""


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    (tmp / "block").mkdir()
    (tmp / "block" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp / "block"), str(ROOT)]), "CUDA_VISIBLE_DEVICES": ""}
    out = tmp / "gpu_check.json"
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    return done, json.loads(out.read_text()) if out.is_file() else None


def test_dry_run_runs_every_part_and_writes_the_json(dry_run):
    done, report = dry_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["schema"] == "losh.gpu_check" and report["complete"] and report["total_s"] > 0
    env = report["environment"]
    assert env["dry_run"] is True and env["cuda_available"] is False and env["torch"]
    parts = report["parts"]
    assert list(parts) == ["cuda_tests", "step_time", "step_time_compiled", "torchrun", "loader"]
    assert {name: p["status"] for name, p in parts.items()} == {
        "cuda_tests": "ok", "step_time": "ok", "step_time_compiled": "skipped", "torchrun": "ok", "loader": "ok"}


def test_dry_run_cuda_tests_are_collected_and_skipped_without_a_gpu(dry_run):
    tests = dry_run[1]["parts"]["cuda_tests"]["figures"]
    assert "tests/test_cuda.py" in tests["files"]
    assert tests["collected"] >= 5 and tests["skipped"] == tests["collected"]
    assert tests["passed"] == tests["failed"] == 0


def test_dry_run_times_both_models_taking_turns(dry_run):
    steps = dry_run[1]["parts"]["step_time"]["figures"]
    assert steps["input"] == "3x8x32x48" and steps["amp"] == "off"
    losh, mttr = steps["models"]["tiny"], steps["models"]["tiny:baseline"]
    for model in (losh, mttr):
        assert model["status"] == "ok" and model["train"]["steps"] == model["infer"]["steps"] == 2
        assert 0 < model["train"]["min_ms"] <= model["train"]["median_ms"] <= model["train"]["max_ms"]
        assert model["samples_per_s"] == pytest.approx(3000 / model["train"]["median_ms"], rel=0.01)
    assert losh["parameters"] > mttr["parameters"]        # the short pathway's cross-attention
    assert steps["train_ratio_losh_vs_mttr"] == pytest.approx(
        losh["train"]["median_ms"] / mttr["train"]["median_ms"], rel=1e-3)
    assert steps["infer_ratio_losh_vs_mttr"] == pytest.approx(
        losh["infer"]["median_ms"] / mttr["infer"]["median_ms"], rel=1e-3)


def test_dry_run_trains_under_torchrun_and_probes_the_process_group(dry_run):
    run = dry_run[1]["parts"]["torchrun"]["figures"]
    assert run["backend"] == "gloo"
    assert run["train"]["finished"] and run["train"]["steps"] == 2 and run["train"]["checkpoint"]
    assert run["train"]["device"] == "cpu"
    assert run["train"]["trainer_process_group"] == "gloo"     # the trainer joins the group with one process
    assert run["probe"]["ok"] and run["probe"]["backend"] == "gloo" and run["probe"]["world_size"] == 1


def test_dry_run_compares_the_loader_with_the_step(dry_run):
    report = dry_run[1]
    loader = report["parts"]["loader"]["figures"]
    assert loader["batches_timed"] == 3 and loader["workers"] == 2 and loader["train_samples"] >= 6
    ratio = report["loader_vs_step_ratio"]
    losh_step = report["parts"]["step_time"]["figures"]["models"]["tiny"]["train"]["median_ms"]
    assert ratio["losh_m_step_ms"] == losh_step
    assert ratio["value"] == pytest.approx(1000 * loader["workers_s_per_batch"] / losh_step, rel=1e-2)


def test_a_failing_part_is_recorded_and_the_run_goes_on(tmp_path):
    from dataclasses import replace

    plan = replace(make_plan(True, None, None), loader_videos=2)     # the synthetic set needs 3 videos
    report = run_check(tmp_path / "out.json", plan, parts=("step_time_compiled", "loader"))
    assert report["parts"]["loader"]["status"] == "error"
    assert "videos must be >= 3" in report["parts"]["loader"]["error"]
    assert report["complete"] and json.loads((tmp_path / "out.json").read_text())["parts"]["loader"]["status"] == "error"


def test_a_part_past_its_time_box_is_killed(tmp_path):
    code, _ = run_isolated([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1, log=tmp_path / "log")
    assert code is None


def test_compiled_parts_give_the_eager_losses():
    """The compile part's `compile_in_place` (traced by TorchDynamo; the `eager` backend runs the
    captured graphs as they are, so the numbers must not move)."""
    import torch

    from bench.gpu_parts import COMPILED_PARTS, compile_in_place
    from bench.train_step import synthetic_batch
    from losh.models.registry import build_criterion, build_model
    from losh.training.loop import forward_and_loss
    from schemas.presets import get_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        config = get_config("tiny")
        model, criterion = build_model(config).train(), build_criterion(config)
        batch = synthetic_batch((32, 48), torch.device("cpu"))
        torch.manual_seed(1)                   # the same dropout masks (RoBERTa's) in both runs
        eager = forward_and_loss(model, criterion, batch, torch.device("cpu"), "off")
        assert compile_in_place(model, "eager") == list(COMPILED_PARTS)
        assert all(model.get_submodule(name)._compiled_call_impl is not None for name in COMPILED_PARTS)
        torch.manual_seed(1)
        compiled = forward_and_loss(model, criterion, batch, torch.device("cpu"), "off")
        compiled["loss"].backward()
    finally:
        torch.set_num_threads(threads)
    for key in ("loss", "loss_dice_long", "loss_lsi", "loss_fbc"):
        assert compiled[key].item() == pytest.approx(eager[key].item(), rel=1e-5, abs=1e-6), key
    assert model.video_proj.weight.grad is not None
