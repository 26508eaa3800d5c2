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
    report = json.loads(out.read_text()) if out.is_file() else None
    if report is not None:
        report["_out"] = str(out)
    return done, report


def test_dry_run_runs_every_part_and_writes_the_json(dry_run):
    done, report = dry_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["schema"] == "losh.gpu_check" and report["complete"] and report["total_s"] > 0
    env = report["environment"]
    assert env["dry_run"] is True and env["cuda_available"] is False and env["torch"]
    parts = report["parts"]
    assert list(parts) == ["cuda_tests", "smoke", "step_time", "step_time_s", "deformable_attention", "torchrun",
                           "ddp", "loader", "step_time_compiled"]         # the quick parts first
    assert {name: p["status"] for name, p in parts.items()} == {
        **{name: "ok" for name in parts}, "step_time_compiled": "skipped"}
    assert env["torch_pinned"] and env["torch_meets_pin"] is True
    logs = (Path(report["_out"]).with_name("gpu_check_logs.txt")).read_text()
    assert "===== smoke.log" in logs and "===== cuda_tests.log" in logs


def test_dry_run_cuda_tests_are_collected_and_skipped_without_a_gpu(dry_run):
    """Their data fixtures are set up before the skip (without PyAV here), as they will be on the GPU machine."""
    tests = dry_run[1]["parts"]["cuda_tests"]["figures"]
    assert "tests/test_cuda.py" in tests["files"]
    assert tests["collected"] >= 8 and tests["skipped"] == tests["collected"]
    assert tests["passed"] == tests["failed"] == 0


def test_dry_run_smoke_steps_and_profiles_all_four_models(dry_run):
    parts = dry_run[1]["parts"]
    models = ["tiny", "tiny:baseline", "tiny-s", "tiny-s:baseline"]
    smoke = parts["smoke"]["figures"]["models"]
    assert list(smoke) == models and all(m["status"] == "ok" and m["grads_finite"] for m in smoke.values())
    assert smoke["tiny-s"]["input"] == "3x5x32x48" and smoke["tiny"]["input"] == "3x8x32x48"
    profiles = [model["profile"] for pair in ("step_time", "step_time_s")
                for model in parts[pair]["figures"]["models"].values()]
    assert len(profiles) == 4 and all(p["wall_ms"] > 0 and p["cpu_ops_ms"] > 0 for p in profiles)
    losh_s = parts["step_time_s"]["figures"]
    assert losh_s["input"] == "3x5x32x48" and losh_s["train_ratio_losh_s_vs_sgmg"] > 0
    attention = parts["deformable_attention"]["figures"]
    assert attention["forward_backward"]["steps"] > 0 and len(attention["levels"]) == 4


def test_dry_run_trains_under_ddp_with_two_processes(dry_run):
    ddp = dry_run[1]["parts"]["ddp"]["figures"]
    gloo = ddp["gloo"]
    assert gloo["status"] == "ok" and [r["rank"] for r in gloo["ranks"]] == [0, 1]
    assert gloo["ranks"][0]["checksum"] == gloo["ranks"][1]["checksum"]      # the same weights after 3 steps
    assert all(len(r["step_ms"]) == 3 for r in gloo["ranks"])


def test_another_torch_than_the_pin_is_said():
    from bench.gpu_check import pinned_versions

    old = pinned_versions("2.11.0+cu130")
    assert old["torch_meets_pin"] is False and "2.11.0" in old["warning"]
    assert pinned_versions("2.15.0")["torch_meets_pin"] is True


def test_a_stopped_run_kills_its_part_and_keeps_the_json(tmp_path):
    """SIGTERM to the runner midway: the running part (its whole process group) dies with it, and the JSON says
    what ran and that it was stopped."""
    import signal
    import time

    out = tmp_path / "out" / "gpu_check.json"
    runner = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out),
                               "--parts", "smoke,torchrun,loader"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:         # wait for the second part to start
        if out.is_file() and "smoke" in json.loads(out.read_text())["parts"]:
            break
        time.sleep(0.5)
    time.sleep(2)
    children = subprocess.run(["pgrep", "-f", "bench.gpu_check --child"], capture_output=True, text=True).stdout.split()
    assert children, "the torchrun part should be running"
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=60)
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", "bench.gpu_check --child"], capture_output=True, text=True).stdout.split()
    assert not set(children) & set(left)
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["interrupted"].startswith("SIGTERM")
    assert report["parts"]["smoke"]["status"] == "ok" and "loader" not in report["parts"]


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
    from losh.schemas.presets import get_config
    from losh.training.loop import forward_and_loss

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
