"""`make gpu-check`: everything a machine with one CUDA GPU should check, in one run, one JSON file.

    python3 -m bench.gpu_check --out OUT/gpu_check.json [--quick] [--budget 300] [--steps 60]
    python3 -m bench.gpu_check --dry-run --out dry.json     # the same code paths, tiny, on the CPU

Quick parts first (a short lease still learns whether the code runs there), then the measuring ones; the JSON is
rewritten after every part, so a run cut short keeps what it did. Each part runs in its own process group with its
own time box; a part that fails or runs out of time is recorded with its error and the run goes on; the whole run
stays within `--budget` seconds (default 300). Stopped early (SIGTERM, SIGINT), the runner kills the running part,
its children included, and writes the JSON with `interrupted`; a part also dies with the runner. Part logs (their
last lines) go to `<out stem>_logs.txt` beside the JSON.

Quick:
    cuda_tests          pytest of the tests marked `cuda` (tests/test_cuda.py): passed/failed counts
    smoke               one training step (the trainer's: fused AdamW) and one inference of LoSh-M, MTTR, LoSh-S
                        and SgMg at paper dims, bf16: finite gradients, cold step time, peak memory
Measuring:
    step_time           LoSh-M vs MTTR (random weights), 3 x 8 x 320 x 576, bf16, taking turns: median/mean
                        training and inference step (cuda-synchronised), peak memory, the ratios; then one
                        profiled step each: wall vs CPU-operator vs GPU-kernel time, and the host-device syncs
                        (torch.cuda.set_sync_debug_mode) with their source lines
    step_time_s         LoSh-S vs SgMg, 3 x 5 x 360 x 640, the same
    deformable_attention  LoSh-S's grid_sample deformable attention, forward + backward, at 5 x 360 x 640
    ddp                 two processes train LoSh-M's dims under DDP on the one GPU (NCCL if it allows, else gloo)
    torchrun            `torchrun --nproc-per-node 1 -m losh.cli.main train` on a small synthetic set, and a probe that
                        joins the NCCL process group under the same launcher
    loader              seconds to load a batch of 3 with flows, with the trainer's default workers, against the
                        measured LoSh-M step (`loader_vs_step_ratio`, < 1: it keeps up)
    step_time_compiled  LoSh-M vs MTTR with their tensor-only parts torch.compile'd (last: compiling is slow)

Needs only torch, torchvision, transformers, tokenizers, h5py, opencv, typer, tqdm, numpy, scipy and pytest (no
spaCy, NLTK, Dask, pycocotools or PyAV). Without CUDA the run is a dry run (said in the JSON).
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
from losh.schemas.atomic import atomic_write_text

SCHEMA = "losh.gpu_check"
QUICK_PARTS = ("cuda_tests", "smoke")
PARTS = QUICK_PARTS + ("step_time", "step_time_s", "deformable_attention", "torchrun", "ddp", "loader",
                       "step_time_compiled")
TOTAL_BUDGET_S = 300          # five minutes: a 15-minute lease, its start included, leaves room for a second run
DRY_RUN_BUDGET_S = 900        # the same parts on a small CPU



def make_plan(dry_run: bool, steps: int | None, compile_steps: int | None) -> Plan:
    if dry_run:   # every code path, at sizes a 2-core CPU runs in seconds
        return Plan(dry_run=True, models=("tiny", "tiny:baseline"), size=(32, 48),
                    models_s=("tiny-s", "tiny-s:baseline"), size_s=(32, 48), steps=steps or 2,
                    compile_steps=compile_steps or 0, warmup=1, amp="off", compile_backend=None,
                    torchrun_config="tiny", torchrun_size=(64, 88), torchrun_steps=2, torchrun_workers=0,
                    loader_size=(64, 88), loader_videos=3, loader_batches=3, loader_workers=2,
                    budgets={"cuda_tests": 150, "smoke": 90, "step_time": 90, "step_time_s": 90,
                             "deformable_attention": 60, "ddp": 120, "step_time_compiled": 60, "torchrun": 150,
                             "loader": 90})
    from losh.schemas.train import TrainSettings
    return Plan(dry_run=False, models=("losh-m", "mttr"), size=(320, 576), models_s=("losh-s", "sgmg"),
                size_s=(360, 640), steps=steps or 20, compile_steps=compile_steps or 10, warmup=3, amp="bf16",
                compile_backend="inductor", torchrun_config="losh-m", torchrun_size=(128, 176), torchrun_steps=5,
                torchrun_workers=2, loader_size=(320, 576), loader_videos=6, loader_batches=30,
                loader_workers=TrainSettings().num_workers,
                budgets={"cuda_tests": 110, "smoke": 35, "step_time": 40, "step_time_s": 45,
                         "deformable_attention": 15, "torchrun": 75, "ddp": 45, "loader": 45,
                         "step_time_compiled": 120})


def environment(dry_run: bool) -> dict:
    cuda = torch.cuda.is_available()
    env = {"dry_run": dry_run, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cuda_available": cuda, "cpus": os.cpu_count(), "platform": platform.platform()}
    env.update(pinned_versions(torch.__version__))
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


def pinned_versions(torch_version: str) -> dict:
    """The torch this project pins (pyproject.toml) beside the one that runs: figures of another version are
    said to be so."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pin = re.search(r'"torch>=([0-9.]+)"', text)
    if pin is None:
        return {"torch_pinned": None}
    wanted = tuple(int(x) for x in pin.group(1).split("."))
    have = tuple(int(x) for x in re.findall(r"\d+", torch_version.split("+")[0])[:3])
    out = {"torch_pinned": f">={pin.group(1)}", "torch_meets_pin": have >= wanted}
    if have < wanted:
        out["warning"] = (f"torch {torch_version} runs here, the project pins >= {pin.group(1)}: these figures are "
                          f"torch {torch_version}'s")
    return out


def _child_env(dry_run: bool) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if dry_run:
        # tiny CPU work: one thread each (several threads on a shared CPU wait on each other, 20x slower)
        env["OMP_NUM_THREADS"] = "1"
    return env


RUNNING: set[int] = set()     # process groups of the parts running now (killed when the runner is stopped)


def _die_with_parent() -> None:
    """In the child before exec: a new session, and SIGKILL when the runner dies (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_isolated(cmd: list[str], timeout: float, log: Path, dry_run: bool = False) -> tuple[int | None, str]:
    """Run in a new process group (killed whole on timeout or when the runner stops); (exit code or None on
    timeout, log tail)."""
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=_child_env(dry_run),
                                preexec_fn=_die_with_parent)
        RUNNING.add(proc.pid)
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            code = None
        finally:
            RUNNING.discard(proc.pid)
    return code, log.read_text(encoding="utf-8", errors="replace")[-3000:]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
        if part in ("step_time", "step_time_s", "step_time_compiled"):
            result = {"figures": gpu_parts.step_time(plan, compiled=part == "step_time_compiled",
                                                     deadline=deadline - 10, save_partial=save_partial,
                                                     pair="s" if part == "step_time_s" else "m")}
        elif part == "torchrun":
            result = {"figures": gpu_parts.torchrun(plan, deadline)}
        elif part == "loader":
            result = {"figures": gpu_parts.loader(plan, deadline - 5)}
        elif part == "smoke":
            result = {"figures": gpu_parts.smoke(plan, deadline - 5)}
        elif part == "deformable_attention":
            result = {"figures": gpu_parts.deformable_attention(plan, deadline - 3)}
        elif part == "ddp":
            result = {"figures": gpu_parts.ddp_two_processes(plan, deadline - 5)}
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


class Stopped(Exception):
    """The runner got SIGTERM/SIGINT/SIGHUP: its parts are killed and the JSON says so."""


def _stop(signum, frame) -> None:   # noqa: ARG001 - a signal handler's signature
    for pid in list(RUNNING):
        _kill_group(pid)
    raise Stopped(signal.Signals(signum).name)


def run_check(out: Path, plan: Plan, parts: tuple[str, ...] = PARTS, budget_s: float = TOTAL_BUDGET_S) -> dict:
    from tqdm import tqdm

    from losh.schemas.progress import progress_bar

    start = time.monotonic()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = out.with_name(f"{out.stem}_logs.txt")
    report: dict = {"schema": SCHEMA, "version": 2, "environment": environment(plan.dry_run),
                    "plan": plan.to_dict(), "budget_s": budget_s, "parts": {}}
    if "warning" in report["environment"]:
        print(f"gpu-check: {report['environment']['warning']}", file=sys.stderr)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
            work = Path(work)
            try:
                for part in progress_bar(parts, desc="gpu-check", unit="part", file=sys.stderr):
                    report["parts"][part] = _run_part(part, plan, work, budget_s - (time.monotonic() - start))
                    tqdm.write(f"gpu-check: {part} {report['parts'][part]['status']} in "
                               f"{report['parts'][part].get('seconds', 0)} s", file=sys.stderr)
                    write_json(out, {**report, "complete": False})   # a stop midway still leaves the parts done
            except Stopped as stop:
                report["interrupted"] = f"{stop} after {time.monotonic() - start:.0f} s: its running part was killed"
            finally:
                _collect_logs(work, logs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "loader" in report["parts"] and "step_time" in report["parts"]:
        report["loader_vs_step_ratio"] = loader_vs_step(report["parts"], plan.models[0])
    report["total_s"] = round(time.monotonic() - start, 1)
    report["complete"] = "interrupted" not in report
    write_json(out, report)
    return report


def _run_part(part: str, plan: Plan, work: Path, left: float) -> dict:
    if part == "step_time_compiled" and plan.compile_backend is None:
        return {"status": "skipped", "reason": "dry run: no torch.compile"}
    budget = min(plan.budgets[part], left)
    if budget < 15:
        return {"status": "skipped", "reason": "the run's time box is spent"}
    part_start = time.monotonic()
    try:
        figures = (run_cuda_tests(budget, work, plan.dry_run) if part == "cuda_tests"
                   else run_child_part(part, plan, budget, work))
        entry = {"status": "ok", "figures": figures}
    except Stopped:
        raise
    except Exception as error:  # noqa: BLE001 - recorded, the next part runs
        entry = {"status": "timeout" if isinstance(error, TimeoutError) else "error",
                 "error": f"{type(error).__name__}: {error}"[:4000]}
        if getattr(error, "figures", None):
            entry["partial_figures"] = error.figures
    entry["seconds"] = round(time.monotonic() - part_start, 1)
    return entry


def _collect_logs(work: Path, logs: Path) -> None:
    """The last lines of every part's log, in one file beside the JSON."""
    text = "".join(f"===== {log.name}\n{log.read_text(encoding='utf-8', errors='replace')[-6000:]}\n"
                   for log in sorted(work.glob("*.log")))
    atomic_write_text(logs, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (also when CUDA is absent)")
    parser.add_argument("--steps", type=int, default=None, help="timed rounds of the eager models (GPU: 60)")
    parser.add_argument("--compile-steps", type=int, default=None, help="timed rounds compiled (GPU: 30)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help=f"the quick parts only ({', '.join(QUICK_PARTS)})")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole run (default {TOTAL_BUDGET_S}; a dry run {DRY_RUN_BUDGET_S})")
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
    parts = QUICK_PARTS if args.quick else tuple(p for p in args.parts.split(",") if p)
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
    budget = args.budget or (DRY_RUN_BUDGET_S if dry_run else TOTAL_BUDGET_S)
    report = run_check(args.out, make_plan(dry_run, args.steps, args.compile_steps), parts, budget)
    bad = [name for name, part in report["parts"].items() if part["status"] not in ("ok", "skipped")]
    print(f"gpu-check: {len(report['parts']) - len(bad)}/{len(report['parts'])} parts ok or skipped "
          f"in {report['total_s']} s; {args.out}" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
