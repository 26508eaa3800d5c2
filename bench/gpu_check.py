"""`make gpu-check`: everything a machine with one CUDA GPU should check, in one run, one JSON file.

    PYTHONPATH=. python3 -m bench.gpu_check [--out gpu_check.json] [--steps 200] [--compile-steps 100]
    PYTHONPATH=. python3 -m bench.gpu_check --dry-run        # the same code paths, tiny, on the CPU

Parts, each in its own process with its own time box (a part that fails or runs out of time is
recorded with its error and the run goes on; the whole run stays under 8 minutes):
    cuda_tests          pytest of the tests marked `cuda` (tests/test_cuda.py): passed/failed counts
    step_time           LoSh-M vs MTTR at paper dims (random weights), 3 x 8 x 320 x 576, bf16
                        autocast, taking turns: median/mean training and inference step
                        (cuda-synchronised), peak memory, samples/s, the LoSh/MTTR ratios
    step_time_compiled  the same with the model's parts torch.compile'd (compile time apart)
    torchrun            `torchrun --nproc-per-node 1 -m cli.main train` on a small synthetic set, and
                        a probe that joins the NCCL process group under the same launcher
    loader              seconds to load a batch of 3 with flows, with the trainer's default workers,
                        against the measured LoSh-M step (`loader_vs_step_ratio`, < 1: it keeps up)

Needs only torch, torchvision, transformers, tokenizers, h5py, opencv, typer, tqdm, numpy and pytest
(no spaCy, NLTK, Dask, pycocotools or PyAV). Without CUDA the run is a dry run (said in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from bench import gpu_parts
from bench.gpu_parts import PROBE_OUT_ENV, ROOT, Plan
from schemas.atomic import atomic_write_text

SCHEMA = "losh.gpu_check"
PARTS = ("cuda_tests", "step_time", "step_time_compiled", "torchrun", "loader")
TOTAL_BUDGET_S = 450          # under the 8 minutes the check promises, with room for start-up


def make_plan(dry_run: bool, steps: int | None, compile_steps: int | None) -> Plan:
    if dry_run:   # every code path, at sizes a 2-core CPU runs in seconds
        return Plan(dry_run=True, models=("tiny", "tiny:baseline"), size=(32, 48), steps=steps or 2,
                    compile_steps=compile_steps or 0, warmup=1, amp="off", compile_backend=None,
                    torchrun_config="tiny", torchrun_size=(64, 88), torchrun_steps=2, torchrun_workers=0,
                    loader_size=(64, 88), loader_videos=3, loader_batches=3, loader_workers=2,
                    budgets={"cuda_tests": 120, "step_time": 120, "step_time_compiled": 60, "torchrun": 150,
                             "loader": 90})
    from schemas.train import TrainSettings
    return Plan(dry_run=False, models=("losh-m", "mttr"), size=(320, 576), steps=steps or 200,
                compile_steps=compile_steps or 100, warmup=5, amp="bf16", compile_backend="inductor",
                torchrun_config="losh-m", torchrun_size=(128, 176), torchrun_steps=5, torchrun_workers=2,
                loader_size=(320, 576), loader_videos=6, loader_batches=30,
                loader_workers=TrainSettings().num_workers,
                budgets={"cuda_tests": 70, "step_time": 95, "step_time_compiled": 150, "torchrun": 90,
                         "loader": 45})


def environment(dry_run: bool) -> dict:
    cuda = torch.cuda.is_available()
    env = {"dry_run": dry_run, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cuda_available": cuda, "cpus": os.cpu_count(), "platform": platform.platform()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                   nccl=gpu_parts.nccl_version(), bf16_supported=torch.cuda.is_bf16_supported())
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def _child_env(dry_run: bool) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if dry_run:
        # tiny CPU work: one thread each (several threads on a shared CPU wait on each other, 20x slower)
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_isolated(cmd: list[str], timeout: float, log: Path, dry_run: bool = False) -> tuple[int | None, str]:
    """Run in a new process group (killed whole on timeout); (exit code or None on timeout, log tail)."""
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=_child_env(dry_run),
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, log.read_text(encoding="utf-8", errors="replace")[-3000:]


def cuda_test_files() -> list[str]:
    """The test files holding tests marked `cuda` (only those are collected: other test files may
    import packages the GPU machine lacks)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if re.search(r"pytest\.mark\.cuda\b", p.read_text(encoding="utf-8")))


def run_cuda_tests(timeout: float, work: Path, dry_run: bool) -> dict:
    files = cuda_test_files()
    if not files:
        raise RuntimeError("no test file holds a test marked cuda")
    report = work / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-rfEs",
           f"--junitxml={report}", *files]
    code, tail = run_isolated(cmd, timeout, work / "cuda_tests.log", dry_run)
    if code is None:
        raise TimeoutError(f"pytest ran past {timeout:.0f} s: {tail[-1500:]}")
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report (exit code {code}): {tail[-1500:]}")
    suites = ElementTree.parse(report).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}.{case.get('name')}: {(bad.get('message') or '')[:300]}"
              for s in suites for case in s.iter("testcase") for bad in case if bad.tag in ("failure", "error")]
    result = {"files": files, "collected": count["tests"], "skipped": count["skipped"],
              "failed": count["failures"] + count["errors"],
              "passed": count["tests"] - count["failures"] - count["errors"] - count["skipped"],
              "exit_code": code, "failures": failed}
    if code not in (0, 5) or result["failed"]:
        raise RuntimeError(f"{result['failed']} CUDA test(s) failed: {failed[:3]}")
    return result


class PartTimeout(TimeoutError):
    """A part ran past its time box; `figures` holds what it had measured by then, if anything."""

    def __init__(self, message: str, figures: dict | None = None) -> None:
        super().__init__(message)
        self.figures = figures


def run_child_part(part: str, plan: Plan, timeout: float, work: Path) -> dict:
    plan_file, result_file = work / "plan.json", work / f"{part}.json"
    plan_file.write_text(json.dumps(plan.to_dict()))
    cmd = [sys.executable, "-m", "bench.gpu_check", "--child", part, "--plan", str(plan_file),
           "--result", str(result_file), "--seconds", str(int(timeout))]
    code, tail = run_isolated(cmd, timeout + 20, work / f"{part}.log", plan.dry_run)   # the child stops itself first
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if code is None or result.get("partial"):
        raise PartTimeout(f"stopped after {timeout + 20:.0f} s: {tail[-1500:]}", result.get("figures"))
    if not result:
        raise RuntimeError(f"exit code {code}: {tail[-1500:]}")
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["figures"]


def child_main(part: str, plan_file: Path, result_file: Path, seconds: float) -> int:
    """One part in this process; its figures (or its error) to `result_file`, written atomically."""
    deadline = time.monotonic() + seconds
    plan = Plan.from_dict(json.loads(Path(plan_file).read_text()))

    def save_partial(figures: dict) -> None:
        write_json(Path(result_file), {"figures": figures, "partial": True})

    try:
        if part in ("step_time", "step_time_compiled"):
            result = {"figures": gpu_parts.step_time(plan, compiled=part == "step_time_compiled",
                                                     deadline=deadline - 10, save_partial=save_partial)}
        elif part == "torchrun":
            result = {"figures": gpu_parts.torchrun(plan, deadline)}
        elif part == "loader":
            result = {"figures": gpu_parts.loader(plan, deadline - 5)}
        else:
            raise ValueError(f"unknown part {part!r}")
    except Exception as error:  # noqa: BLE001 - recorded, the runner goes on
        result = {"error": f"{type(error).__name__}: {error}"[:4000]}
    write_json(Path(result_file), result)
    return 0


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")   # figures may hold NaN: not strict JSON


def loader_vs_step(parts: dict, losh_spec: str) -> dict | None:
    """The loader's seconds per batch (default workers) over the measured eager LoSh-M step."""
    loader, steps = parts["loader"].get("figures"), parts["step_time"].get("figures")
    if not loader or not steps:
        return None
    step_ms = steps["models"].get(losh_spec, {}).get("train", {}).get("median_ms")
    if not step_ms:
        return None
    return {"value": float(f"{1000 * loader['workers_s_per_batch'] / step_ms:.4g}"), "target": "< 1",
            "loader_ms_per_batch": round(1000 * loader["workers_s_per_batch"], 3), "losh_m_step_ms": step_ms,
            "main_process_ratio": float(f"{1000 * loader['main_process_s_per_batch'] / step_ms:.4g}")}


def run_check(out: Path, plan: Plan, parts: tuple[str, ...] = PARTS) -> dict:
    from tqdm import tqdm

    start = time.monotonic()
    report: dict = {"schema": SCHEMA, "version": 1, "environment": environment(plan.dry_run),
                    "plan": plan.to_dict(), "parts": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        work = Path(work)
        for part in tqdm(parts, desc="gpu-check", unit="part", file=sys.stderr):
            if part == "step_time_compiled" and plan.compile_backend is None:
                report["parts"][part] = {"status": "skipped", "reason": "dry run: no torch.compile"}
                continue
            left = TOTAL_BUDGET_S - (time.monotonic() - start)
            budget = min(plan.budgets[part], left)
            if budget < 15:
                report["parts"][part] = {"status": "skipped", "reason": f"total time box of {TOTAL_BUDGET_S} s spent"}
                continue
            part_start = time.monotonic()
            try:
                figures = (run_cuda_tests(budget, work, plan.dry_run) if part == "cuda_tests"
                           else run_child_part(part, plan, budget, work))
                entry = {"status": "ok", "figures": figures}
            except Exception as error:  # noqa: BLE001 - recorded, the next part runs
                entry = {"status": "timeout" if isinstance(error, TimeoutError) else "error",
                         "error": f"{type(error).__name__}: {error}"[:4000]}
                if getattr(error, "figures", None):
                    entry["partial_figures"] = error.figures
            entry["seconds"] = round(time.monotonic() - part_start, 1)
            report["parts"][part] = entry
            tqdm.write(f"gpu-check: {part} {entry['status']} in {entry['seconds']} s", file=sys.stderr)
            write_json(out, {**report, "complete": False})   # a stop midway still leaves the parts done
    if "loader" in report["parts"] and "step_time" in report["parts"]:
        report["loader_vs_step_ratio"] = loader_vs_step(report["parts"], plan.models[0])
    report["total_s"] = round(time.monotonic() - start, 1)
    report["complete"] = True
    write_json(out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (also when CUDA is absent)")
    parser.add_argument("--steps", type=int, default=None, help="timed rounds of the eager models (GPU: 200)")
    parser.add_argument("--compile-steps", type=int, default=None, help="timed rounds compiled (GPU: 100)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=60, help=argparse.SUPPRESS)
    parser.add_argument("--probe-distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_distributed:
        result = gpu_parts.probe_distributed()
        if os.environ.get("RANK", "0") == "0":
            write_json(Path(os.environ[PROBE_OUT_ENV]), result)
        return 0
    if args.child:
        return child_main(args.child, args.plan, args.result, args.seconds)
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; parts: {','.join(PARTS)}")
    for name in ("steps", "compile_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    dry_run = args.dry_run or not torch.cuda.is_available()
    if dry_run and not args.dry_run:
        print("gpu-check: no CUDA device, so this is a dry run (tiny sizes on the CPU; no GPU figure)",
              file=sys.stderr)
    report = run_check(args.out, make_plan(dry_run, args.steps, args.compile_steps), parts)
    bad = [name for name, part in report["parts"].items() if part["status"] not in ("ok", "skipped")]
    print(f"gpu-check: {len(report['parts']) - len(bad)}/{len(report['parts'])} parts ok or skipped "
          f"in {report['total_s']} s; {args.out}" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
