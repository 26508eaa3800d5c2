"""The measuring parts of `make gpu-check` (bench/gpu_check.py runs each in its own process).

Each part takes the run's `Plan` and returns a dict of figures; it raises on failure (the runner
records the error and goes on). Nothing here imports spaCy, NLTK, Dask, pycocotools or PyAV: the
GPU machine has none of them.
"""
from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.train_step import BATCH, NO_DOWNLOAD, Timed

ROOT = Path(__file__).resolve().parents[1]
PROBE_OUT_ENV = "GPU_CHECK_PROBE_OUT"   # where the distributed probe writes its JSON result
# the tensor-only parts of the model; the glue (tokenizer, pathway slicing) and the loss stay eager
COMPILED_PARTS = ("backbone", "text_encoder.model", "encoder", "decoder", "spatial_decoder")
PAPER_MS = {"train": (153, 141), "infer": (80, 79)}   # LoSh-M, MTTR (the paper's table 4)


@dataclass(frozen=True)
class Plan:
    """Sizes and time boxes of one run: the GPU run, or the CPU dry run of the same code paths."""

    dry_run: bool
    models: tuple[str, str]            # (LoSh-M, MTTR) config specs
    size: tuple[int, int]              # H x W of their step-time input (8 frames, batch 3)
    models_s: tuple[str, str]          # (LoSh-S, SgMg) config specs
    size_s: tuple[int, int]            # H x W of theirs (5 frames, batch 3)
    steps: int                         # timed rounds of the eager models
    compile_steps: int                 # timed rounds of the compiled models
    warmup: int                        # rounds dropped before timing (compilation happens there)
    amp: str
    compile_backend: str | None        # None: the compile part is skipped
    torchrun_config: str               # preset of the torchrun smoke run (random weights)
    torchrun_size: tuple[int, int]
    torchrun_steps: int
    torchrun_workers: int
    loader_size: tuple[int, int]
    loader_videos: int
    loader_batches: int
    loader_workers: int                # the trainer's default DataLoader workers
    budgets: dict                      # part -> seconds before it is stopped

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        tuples = ("models", "size", "models_s", "size_s", "torchrun_size", "loader_size")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


def nccl_version() -> str | None:
    """NCCL's version as "2.27.3" (older torch returns one int, e.g. 22703)."""
    version = torch.cuda.nccl.version()
    if isinstance(version, int):
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}" if version >= 10000 else str(version)
    return ".".join(map(str, version))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _summary(seconds: list[float]) -> dict:
    if not seconds:
        return {"steps": 0}
    return {"steps": len(seconds), "median_ms": round(1000 * statistics.median(seconds), 3),
            "mean_ms": round(1000 * statistics.fmean(seconds), 3), "min_ms": round(1000 * min(seconds), 3),
            "max_ms": round(1000 * max(seconds), 3)}


def compile_in_place(model: torch.nn.Module, backend: str) -> list[str]:
    """torch.compile the model's tensor-only parts in place, so that both `forward` (training) and
    `infer` run them compiled."""
    for name in COMPILED_PARTS:
        model.get_submodule(name).compile(backend=backend)
    return list(COMPILED_PARTS)


def step_time(plan: Plan, compiled: bool, deadline: float, save_partial=None, pair: str = "m") -> dict:
    """Training and inference step times of a pair of models (`pair` "m": LoSh-M and MTTR, "s": LoSh-S and SgMg),
    taking turns round by round after the warm-up, until `plan.steps` rounds or the deadline; peak memory of each
    model's own steps. Each training step is the trainer's (`losh.training.loop.train_step`: fused AdamW, the
    batch from pinned host memory). `save_partial(figures)` is called after each model's warm-up (a compile that
    outlasts the time box still leaves what was measured)."""
    from losh.schemas.presets import get_config
    from losh.schemas.progress import progress_bar

    device = _device()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    steps = plan.compile_steps if compiled else plan.steps
    models, size = (plan.models, plan.size) if pair == "m" else (plan.models_s, plan.size_s)
    frames = get_config(models[0]).window
    out: dict = {"input": f"{BATCH}x{frames}x{size[0]}x{size[1]}", "amp": plan.amp, "device": str(device),
                 "warmup_rounds": plan.warmup, "optimizer": "AdamW (fused, the trainer's)", "models": {}}
    if compiled:
        out.update(backend=plan.compile_backend, compiled_parts=list(COMPILED_PARTS))
    timed: dict[str, Timed] = {}
    for spec in models:
        entry = out["models"].setdefault(spec, {})
        try:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            resident_before = torch.cuda.memory_allocated() if cuda else 0   # the other model, if built
            start = time.perf_counter()
            model = Timed(spec, size, device, plan.amp)
            if compiled:
                compile_in_place(model.model, plan.compile_backend)
            entry["build_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            for _ in range(plan.warmup):
                model.train_step()
                model.infer_step()
            entry["compile_s" if compiled else "warmup_s"] = round(time.perf_counter() - start, 2)
            if cuda:
                peak = torch.cuda.max_memory_allocated() - resident_before
                entry["peak_memory_gib"] = round(peak / 2**30, 3)
            entry["parameters"] = model.model.num_parameters(trainable_only=False)
            timed[spec] = model
        except Exception as error:   # noqa: BLE001 - one model failing must not hide the other
            entry.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
        if save_partial is not None:
            save_partial(out)
    for spec, model in timed.items():         # one profiled step each, warmed up (CPU vs GPU time, syncs)
        if compiled or time.monotonic() > deadline:
            break
        try:
            out["models"][spec]["profile"] = profile_step(model)
        except Exception as error:   # noqa: BLE001 - the timings stand without it
            out["models"][spec]["profile"] = {"error": f"{type(error).__name__}: {error}"[:1000]}
    if save_partial is not None:
        save_partial(out)
    times = {spec: ([], []) for spec in timed}
    for _ in progress_bar(range(steps), desc="compiled steps" if compiled else "steps", unit="step", mininterval=10,
                          file=sys.stderr):
        if time.monotonic() > deadline:
            out["stopped_early"] = "time box reached"
            break
        for spec, model in timed.items():
            times[spec][0].append(model.train_step())
            times[spec][1].append(model.infer_step())
    for spec, (train, infer) in times.items():
        entry = out["models"][spec]
        entry.update(status="ok", train=_summary(train), infer=_summary(infer))
        if train:
            entry["samples_per_s"] = round(BATCH / statistics.median(train), 2)
    losh, base = models
    name = "losh_vs_mttr" if pair == "m" else "losh_s_vs_sgmg"
    for phase in ("train", "infer"):
        a, b = (out["models"].get(spec, {}).get(phase, {}).get("median_ms") for spec in (losh, base))
        out[f"{phase}_ratio_{name}"] = round(a / b, 4) if a and b else None
        if pair == "m":
            paper = PAPER_MS[phase]
            out[f"{phase}_ratio_paper"] = f"{paper[0]}/{paper[1]} ms = {paper[0] / paper[1]:.3f}"
    failed = [spec for spec in models if out["models"][spec].get("status") != "ok"]
    if len(failed) == len(models):
        raise RuntimeError("; ".join(f"{s}: {out['models'][s]['error']}" for s in failed))
    return out


def _synthetic_prepared(folder: Path, size: tuple[int, int], videos: int, annotated: int, workers: int) -> Path:
    """A prepared set with flows, made on the spot: synthetic A2D layout, manual short text (no
    tagger), flows computed in this process (no Dask)."""
    from losh.pipeline.flows import compute_flows
    from losh.pipeline.prepare import PrepareSettings, prepare_a2d
    from losh.pipeline.synth import write_synthetic_a2d

    h, w = size
    raw, prep = folder / "raw", folder / "prep"
    write_synthetic_a2d(raw, videos=videos, seed=0, height=h, width=w, frames=16, annotated_per_video=annotated,
                        progress=False)
    # OpenCV decodes: the GPU machine has no PyAV (prepare-data's default decoder; both agree, README)
    prepare_a2d(raw, prep, short_source="manual", settings=PrepareSettings(short_side=min(h, w),
                max_long_side=max(h, w), decoder="opencv"), workers=workers, progress=False)
    compute_flows(prep, workers=0, progress=False)
    return prep


def _run_with_timeout(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, output); on timeout torchrun gets SIGTERM, which it passes on
    to its workers, then SIGKILL."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1))
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        return None, output


def torchrun(plan: Plan, deadline: float) -> dict:
    """`torchrun --nproc-per-node 1 -m losh.cli.main train` on a small synthetic set, and a one-process
    probe of the same launcher that initialises the process group (NCCL on CUDA) and runs DDP."""
    from losh.schemas.config import save_config, with_overrides
    from losh.schemas.presets import get_config

    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    # NCCL prints its version when it initialises; the trainer prints the process group it joined
    paths = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": paths,
           "NCCL_DEBUG": "VERSION"}
    out: dict = {"backend": backend}
    with tempfile.TemporaryDirectory(prefix="gpu_check_torchrun_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        prep = _synthetic_prepared(tmp, plan.torchrun_size, videos=4, annotated=2, workers=1)
        out["data_s"] = round(time.perf_counter() - start, 2)
        config_path = tmp / "config.json"
        save_config(with_overrides(get_config(plan.torchrun_config), NO_DOWNLOAD), config_path)
        train_cmd = ["-m", "losh.cli.main", "train", "--data", str(prep), "--out", str(tmp / "run"),
                     "--config", str(config_path), "--epochs", "2", "--max-steps", str(plan.torchrun_steps),
                     "--batch-size", str(BATCH), "--workers", str(plan.torchrun_workers)]
        out["command"] = "torchrun --standalone --nproc-per-node 1 " + " ".join(train_cmd[1:])
        start = time.perf_counter()
        code, log = _run_with_timeout(launcher + train_cmd, env, deadline - time.monotonic() - 30)
        out["train_s"] = round(time.perf_counter() - start, 2)
        trained = re.search(r"trained (\d+) steps .* on (\S+)(?: \(process group (\w+) x\d+\))? in", log)
        out["train"] = {
            "exit_code": code, "finished": code == 0 and trained is not None,
            "steps": int(trained.group(1)) if trained else None, "device": trained.group(2) if trained else None,
            "checkpoint": (tmp / "run" / "checkpoints" / "last.pt").is_file(),
            # the process group the trainer joined under torchrun (nccl on CUDA, gloo on the CPU)
            "trainer_process_group": trained.group(3) if trained else None,
            "nccl_initialised": "NCCL version" in log if cuda else None,
        }
        if not out["train"]["finished"]:
            out["train"]["log_tail"] = log[-3000:]
        start = time.perf_counter()
        # the probe writes its result to a file: on the shared output pipe, other processes' log lines
        # could run into a printed result
        result = tmp / "probe.json"
        code, log = _run_with_timeout(launcher + ["-m", "bench.gpu_check", "--probe-distributed"],
                                      {**env, PROBE_OUT_ENV: str(result)}, deadline - time.monotonic() - 5)
        out["probe_s"] = round(time.perf_counter() - start, 2)
        out["probe"] = {"exit_code": code,
                        **(json.loads(result.read_text()) if result.is_file() else {"log_tail": log[-3000:]})}
    if not out["train"]["finished"]:
        raise RuntimeError(f"torchrun train did not finish (exit code {out['train']['exit_code']}): "
                           f"{out['train'].get('log_tail', '')[-800:]}")
    if not out["probe"].get("ok"):
        raise RuntimeError(f"distributed probe failed: {out['probe']}")
    return out


def probe_distributed() -> dict:
    """Inside torchrun: join the process group (NCCL on CUDA, else gloo), all-reduce, one DDP step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        total = torch.ones(4, device=device)
        dist.all_reduce(total)
        model = DistributedDataParallel(torch.nn.Linear(8, 2).to(device))
        model(torch.randn(5, 8, device=device)).square().sum().backward()
        finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        dist.barrier()
        result = {"ok": bool(total[0].item() == dist.get_world_size()) and finite,
                  "backend": dist.get_backend(), "world_size": dist.get_world_size(), "ddp_grads_finite": finite}
        if cuda:
            result["nccl_version"] = nccl_version()
        return result
    finally:
        dist.destroy_process_group()


def loader(plan: Plan, deadline: float) -> dict:
    """Seconds to load a batch of 3 (frames, masks, flows, flip, collate) from prepared shards: in
    the main process, and through the trainer's DataLoader with its default workers (pinned memory
    on CUDA), in steady state (the first batch, which starts the workers, is not counted)."""
    from torch.utils.data import DataLoader

    from losh.data.dataset import Augment, RVOSDataset, collate

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="gpu_check_loader_") as tmp:
        start = time.perf_counter()
        prep = _synthetic_prepared(Path(tmp), plan.loader_size, videos=plan.loader_videos, annotated=3,
                                   workers=max(1, min(4, os.cpu_count() or 1)))
        data_s = round(time.perf_counter() - start, 2)
        dataset = RVOSDataset(prep, "train", with_flows=True, augment=Augment(flip_p=0.5))

        def timed(workers: int) -> list[float]:
            data = DataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=collate, num_workers=workers,
                              pin_memory=cuda, persistent_workers=workers > 0, drop_last=True)
            seconds: list[float] = []
            while len(seconds) < plan.loader_batches and time.monotonic() < deadline:
                batches = iter(data)
                next(batches)                  # starts the workers / opens the shards
                start = time.perf_counter()
                for _ in batches:
                    seconds.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    if len(seconds) >= plan.loader_batches:
                        break
            return seconds

        main_process = timed(0)
        workers = timed(plan.loader_workers)
    if not main_process or not workers:
        raise RuntimeError(f"no batch timed ({len(dataset)} training samples)")
    return {"input": f"{BATCH}x8x{plan.loader_size[0]}x{plan.loader_size[1]} with flows", "data_s": data_s,
            "train_samples": len(dataset), "pin_memory": cuda,
            "main_process_s_per_batch": round(statistics.median(main_process), 5),
            "workers": plan.loader_workers,
            "workers_s_per_batch": round(statistics.fmean(workers), 5), "batches_timed": len(workers)}


def smoke(plan: Plan, deadline: float) -> dict:
    """One training step (the trainer's: forward, loss, backward, fused AdamW) and one inference of each of the
    four models at their input size (paper dims, random weights): does each run on this device at all, with
    finite losses and gradients. The first step of a model is cold (kernel selection, allocations)."""
    device = _device()
    cuda = device.type == "cuda"
    out: dict = {"amp": plan.amp, "device": str(device), "models": {}}
    for spec, size in ((plan.models[0], plan.size), (plan.models[1], plan.size),
                       (plan.models_s[0], plan.size_s), (plan.models_s[1], plan.size_s)):
        if time.monotonic() > deadline:
            out["models"][spec] = {"status": "skipped", "reason": "time box reached"}
            continue
        entry = out["models"][spec] = {}
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            model = Timed(spec, size, device, plan.amp)
            entry["build_s"] = round(time.perf_counter() - start, 2)
            entry["input"] = f"{BATCH}x{model.config.window}x{size[0]}x{size[1]}"
            entry["train_step_s"] = round(model.train_step(), 3)
            grads = [p.grad for p in model.model.parameters() if p.grad is not None]
            entry["grads_finite"] = bool(torch.stack([g.float().abs().sum() for g in grads]).isfinite().all())
            entry["infer_s"] = round(model.infer_step(), 3)
            if cuda:
                entry["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            entry["status"] = "ok" if entry["grads_finite"] else "error"
            del model
        except Exception as error:   # noqa: BLE001 - one model failing must not hide the others
            entry.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
    failed = [spec for spec, e in out["models"].items() if e.get("status") == "error"]
    if failed:
        raise RuntimeError(f"{failed} failed: " + "; ".join(out["models"][s].get("error", "non-finite gradients")
                                                           for s in failed))
    return out


def profile_step(model: Timed) -> dict:
    """One more training step of a warmed-up model: its wall time, the CPU time of its operators and the GPU time
    of its kernels (torch.profiler), and the host-device synchronisations it makes, counted by
    `torch.cuda.set_sync_debug_mode` (each one a warning; their source lines). A step whose GPU time is well under
    its wall time is CPU-bound: the GPU waits on Python."""
    import warnings
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    cuda = model.device.type == "cuda"
    entry: dict = {"wall_ms": round(1000 * model.train_step(), 2)}
    if cuda:
        sources: Counter = Counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model.train_step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        for w in caught:
            if "synchroniz" in str(w.message):
                sources[f"{Path(w.filename).name}:{w.lineno}"] += 1
        entry["syncs"] = sum(sources.values())
        entry["sync_sources"] = dict(sources.most_common(10))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        model.train_step()
    events = prof.key_averages()
    entry["cpu_ops_ms"] = round(sum(e.self_cpu_time_total for e in events) / 1000, 2)
    if cuda:
        gpu_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
        entry["gpu_kernels_ms"] = round(gpu_us / 1000, 2)
        entry["gpu_busy_share"] = round(entry["gpu_kernels_ms"] / entry["wall_ms"], 3)
    return entry


def deformable_attention(plan: Plan, deadline: float) -> dict:
    """LoSh-S's multi-scale deformable attention (the grid_sample form) forward and backward at the encoder's size
    of a 5 x 360 x 640 clip: 4 levels (strides 8-64), 8 heads, 4 points; float32 inside, as SgMg runs its op."""
    from losh.models.losh_s.deformable_attention import MSDeformAttn, spatial_shapes_tensor

    device = _device()
    h, w = plan.size_s
    shapes = [(-(-h // s), -(-w // s)) for s in (8, 16, 32, 64)]
    length = sum(a * b for a, b in shapes)
    clips = BATCH * 5
    attention = MSDeformAttn(256, 4, 8, 4).to(device)
    spatial = spatial_shapes_tensor(shapes, device)
    starts = torch.cat((spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]))
    value = torch.randn(clips, length, 256, device=device, requires_grad=True)
    references = torch.rand(clips, length, 4, 2, device=device)
    times = []
    while len(times) < 12 and time.monotonic() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = attention(value, references, value, spatial, starts)
        out.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"tokens": length, "clips": clips, "levels": shapes, "forward_backward": _summary(times[2:] or times)}


def ddp_two_processes(plan: Plan, deadline: float) -> dict:
    """Two processes train LoSh-M's paper dims under DistributedDataParallel (static graph, as the trainer) for
    three steps each on this machine's GPU(s), and check that both ranks end with the same weights. On one GPU with
    gloo (which runs two ranks on one device), then NCCL to record its answer: NCCL refuses two ranks on one
    device ("Duplicate GPU detected", seen on an H200), so one GPU runs a multi-GPU NCCL job only as one process
    (the torchrun part)."""
    import torch.multiprocessing as mp

    results: dict = {}
    # one GPU: gloo first (it runs two ranks on one device), then NCCL only to record its answer
    one_gpu = torch.cuda.is_available() and torch.cuda.device_count() == 1
    backends = ("gloo", "nccl") if one_gpu else ("nccl", "gloo") if torch.cuda.is_available() else ("gloo",)
    for index, backend in enumerate(backends):
        left = deadline - time.monotonic()
        if left < 10:
            results[backend] = {"status": "skipped", "reason": "time box reached"}
            break
        until = time.monotonic() + (left * 0.6 if index < len(backends) - 1 else left)
        with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
            port = 29500 + os.getpid() % 1000
            context = mp.get_context("spawn")
            procs = [context.Process(target=_ddp_rank, args=(rank, 2, backend, port, plan, tmp)) for rank in range(2)]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(timeout=max(1.0, until - time.monotonic()))
            alive = [proc for proc in procs if proc.is_alive()]
            for proc in alive:
                proc.kill()
            files = [Path(tmp, f"rank{r}.json") for r in range(2)]
            ranks = [json.loads(f.read_text()) for f in files if f.is_file()]
        entry = {"exit_codes": [proc.exitcode for proc in procs], "ranks": ranks}
        entry["status"] = ("ok" if len(ranks) == 2 and all(r.get("ok") for r in ranks)
                           and ranks[0]["checksum"] == ranks[1]["checksum"] else "error")
        if alive:
            entry["status"], entry["reason"] = "timeout", "killed at the time box"
        results[backend] = entry
        if entry["status"] == "ok" and not one_gpu:
            break
    if not any(r.get("status") == "ok" for r in results.values()):
        raise RuntimeError(f"no backend ran 2-process DDP: {json.dumps(results)[:2000]}")
    return results


def _ddp_rank(rank: int, world: int, backend: str, port: int, plan: Plan, folder: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from losh.schemas.train import TrainSettings
    from losh.training.loop import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result: dict = {"rank": rank, "backend": backend}
    try:
        device = _device()
        if device.type == "cuda":
            torch.cuda.set_device(0)                       # both ranks on the one GPU
        dist.init_process_group(backend, rank=rank, world_size=world)
        timed = Timed(plan.models[0], plan.torchrun_size, device, plan.amp)
        net = DistributedDataParallel(timed.model, static_graph=True)
        settings = TrainSettings(amp=plan.amp)
        times = []
        for step in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(net, timed.model, timed.criterion, timed.optimizer, None, timed.batch, device, settings, step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        checksum = float(sum(p.detach().double().sum() for p in timed.model.parameters()))
        dist.barrier()
        result.update(ok=True, step_ms=[round(1000 * t, 1) for t in times], checksum=checksum,
                      input=f"{BATCH}x8x{plan.torchrun_size[0]}x{plan.torchrun_size[1]}")
    except Exception as error:   # noqa: BLE001 - written for the parent
        result.update(ok=False, error=f"{type(error).__name__}: {error}"[:1500])
    finally:
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    # no teardown: gloo's group with CUDA tensors can hang in destroy/exit once the other rank is gone
    os._exit(0)
