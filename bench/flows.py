"""compute-flows: per-flow cost, parallel scaling, read speed and storage of the flow shards.

Prints the JSON lines `flow_cost_ratio` (stored pipeline vs bare cv2.calcOpticalFlowFarneback on
the same frame pairs), `flow_parallel_efficiency` (N local Dask workers vs N x the serial
throughput, cluster start-up excluded; the same code against a separately started `dask scheduler`
+ `dask worker` is a detail), `flow_read_speedup` (FlowReader.read vs computing a sample's flows
from PREP) and `flow_bytes_per_annotated_frame` (with the compression measurements behind the
default). Data: a synthetic set at A2D's 320-pixel short side (frames 320 x 448). Its background
is static, so its flows are mostly zero; the storage measurements are repeated on frames of a
panning and zooming camera, whose dense flows are what real video compresses like.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

from losh.pipeline.flow_field import encode, farneback, gray_from_bgr, to_grid
from losh.pipeline.flows import (
    build_flow_jobs,
    compute_flows,
    compute_video_flows,
    frame_flows,
    keep_freed_memory,
    read_gray_frames,
    start_local_cluster,
)
from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.pipeline.synth import write_synthetic_a2d
from losh.schemas.flow_reader import FlowReader
from losh.schemas.flows import FlowParams, parse_compression
from losh.schemas.prepared_reader import PreparedDataset

REPEATS = 2            # best of: the machine is shared, the minimum is the least disturbed run
PARALLEL_REPEATS = 3
# (dtype, compression, quant_step in grid pixels or None)
CANDIDATES = [("float32", "none", None), ("float16", "none", None), ("float16", "lzf", None),
              ("float16", "gzip-4", None), ("float16", "shuffle+gzip-1", None), ("float16", "shuffle+gzip-4", None),
              ("float16", "shuffle+lzf", 1 / 64), ("float16", "gzip-4", 1 / 64), ("float16", "shuffle+gzip-1", 1 / 64),
              ("float16", "shuffle+gzip-4", 1 / 64), ("float16", "shuffle+gzip-9", 1 / 64),
              ("float16", "shuffle+gzip-4", 1 / 128), ("float16", "shuffle+gzip-4", 1 / 32)]
MAX_ERROR = 1 / 128        # grid pixels (1/32 frame pixel at stride 4): far below Farneback's own error
MAX_WRITE_SHARE = 0.05     # of the Farneback time of the same flows (the cost target allows 25% in all)


def emit(name: str, value: float, unit: str, target: float | None, **details) -> None:
    print(json.dumps({"bench": name, "value": value, "unit": unit, "target": target, **details}), flush=True)


def make_prep(work: Path) -> Path:
    # 17 videos, one of them "missed": 16 equal jobs, an even split for 2 (or 4, 8, 16) workers
    write_synthetic_a2d(work / "raw", videos=17, seed=0, height=320, width=448, frames=24, annotated_per_video=3,
                        progress=False)
    prepare_a2d(work / "raw", work / "prep", short_source="manual", workers=1, progress=False,
                settings=PrepareSettings(window=8, short_side=320, max_long_side=576))
    return work / "prep"


def fresh(prep: Path) -> Path:
    shutil.rmtree(prep / "flows", ignore_errors=True)
    return prep


def cost_ratio(prep: Path, params: FlowParams) -> dict:
    """Per video, the bare cv2 calls (grey frames decoded beforehand) and right after them the
    pipeline's task on the same frame pairs (decode, Farneback, resize, round, compress, write);
    best of REPEATS per video, so that both sides of a pair see the same machine load. The
    planning and index writing of compute_flows are added once, from a run over the finished set."""
    cv2.setNumThreads(1)
    keep_freed_memory()   # the tasks' allocator settings, for the bare calls too
    jobs = build_flow_jobs(prep, params)[0]
    bare = {job.video_id: [] for job in jobs}
    task = {job.video_id: [] for job in jobs}
    stages = {job.video_id: None for job in jobs}
    calls = 0
    for repeat in range(REPEATS):
        fresh(prep).joinpath("flows").mkdir()
        for job in jobs:
            gray = read_gray_frames(job.prep_shard, set(job.frames) | {t for ts in job.targets for t in ts})
            pairs = sorted({(k, t) for k, ts in zip(job.frames, job.targets) for t in ts})
            start = time.perf_counter()
            for k, t in pairs:
                farneback(gray[k], gray[t], params.farneback)
            bare[job.video_id].append(time.perf_counter() - start)
            calls += len(pairs) if repeat == 0 else 0
            start = time.perf_counter()
            summary = compute_video_flows(job)
            task[job.video_id].append(time.perf_counter() - start)
            if task[job.video_id][-1] == min(task[job.video_id]):
                stages[job.video_id] = summary["seconds"]
    run = compute_flows(prep, params, workers=0, progress=False)   # all shards kept: plan + index only
    assert not run.computed
    flows = run.index["counts"]["flows"]
    bare_s = sum(min(v) for v in bare.values())
    task_s = sum(min(v) for v in task.values())
    stage_s = {k: sum(s[k] for s in stages.values()) for k in ("decode", "flows", "write", "wall", "cpu", "thread_cpu")}
    return {"bare_s": bare_s, "pipeline_s": task_s + run.seconds, "overhead_s": run.seconds, "calls": calls,
            "task_thread_cpu_s": stage_s.pop("thread_cpu"), "task_cpu_share": stage_s.pop("cpu") / stage_s.pop("wall"),
            "flows": flows, "stages_ms_per_flow": {k: round(v / flows * 1e3, 3) for k, v in stage_s.items()}}


def flow_arrays(prep: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted((prep / "flows").glob("*.h5")):
        with h5py.File(path) as f:
            out[path.name] = f["flows"][()].tobytes() + f["valid"][()].tobytes() + f["targets"][()].tobytes()
    return out


def warm_workers(client) -> None:
    client.run(lambda: __import__("losh.pipeline.flows"))   # imports, outside the timing (a real run is hours)


def parallel_local(prep: Path, workers: int) -> dict:
    """compute_flows on the local cluster it starts itself, started beforehand to time it apart."""
    from distributed import Client

    start = time.perf_counter()
    with start_local_cluster(workers) as cluster, Client(cluster) as client:
        warm_workers(client)
        startup = time.perf_counter() - start
        runs = [compute_flows(fresh(prep), workers=workers, scheduler=cluster.scheduler_address, progress=False)
                for _ in range(PARALLEL_REPEATS)]
    return {**run_stats(min(runs, key=lambda r: r.seconds), workers), "startup_s": startup}


def parallel_scheduler(prep: Path, workers: int, work: Path) -> dict:
    """The same code against a separately started `dask scheduler` + `dask worker` on localhost."""
    from distributed import Client

    dask = Path(sys.executable).with_name("dask")
    scheduler_file = work / "scheduler.json"
    procs = [subprocess.Popen([str(dask), "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file",
                               str(scheduler_file)], stderr=subprocess.DEVNULL)]
    try:
        while not scheduler_file.exists():
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(subprocess.Popen([str(dask), "worker", address, "--nworkers", str(workers), "--nthreads", "1",
                                       "--no-dashboard"], stderr=subprocess.DEVNULL))
        with Client(address) as client:
            client.wait_for_workers(workers, timeout=120)
            warm_workers(client)
        runs = [compute_flows(fresh(prep), scheduler=address, progress=False) for _ in range(PARALLEL_REPEATS)]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=60)
    return run_stats(min(runs, key=lambda r: r.seconds), workers)


def run_stats(run, workers: int) -> dict:
    """Wall time, and why it is what it is: how busy Dask kept the workers, and how much CPU the
    tasks got while running (below 1: other processes on the machine took it)."""
    wall = sum(t["wall"] for t in run.task_seconds.values())
    return {"seconds": run.seconds, "task_wall_s": wall, "worker_busy_fraction": wall / (workers * run.seconds),
            "task_cpu_share": sum(t["cpu"] for t in run.task_seconds.values()) / wall,
            "task_thread_cpu_s": sum(t["thread_cpu"] for t in run.task_seconds.values())}


def read_speedup(prep: Path, params: FlowParams) -> dict:
    ds = PreparedDataset(prep)
    seen = {}
    for r in ds.records:
        seen.setdefault((r.video_id, r.frame), r)
    records = list(seen.values())
    cold_reader = FlowReader(prep)
    start = time.perf_counter()
    for r in records:   # first read of each video opens its shard
        cold_reader.read(r.video_id, r.frame)
    cold = (time.perf_counter() - start) / len(records)
    start = time.perf_counter()
    for _ in range(5):
        for r in records:
            cold_reader.read(r.video_id, r.frame)
    warm = (time.perf_counter() - start) / (5 * len(records))
    centre = ds.manifest["window"] // 2
    start = time.perf_counter()
    for r in records:   # what a loader without stored flows would do: decode the frames, run Farneback
        anchor = r.window[r.annotated_position]   # the annotated frame, or the video's last past its end
        numbers = [anchor] + [r.window[centre + t] for t in params.offsets]
        gray = {n: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for n, f in zip(numbers, ds.read_frames(r, numbers))}
        frame_flows(gray, anchor, tuple(numbers[1:]), params)
    compute = (time.perf_counter() - start) / len(records)
    return {"read_ms": warm * 1e3, "read_cold_ms": cold * 1e3, "compute_ms": compute * 1e3}


def camera_motion_flows(params: FlowParams, frames: int = 12) -> list[np.ndarray]:
    """Float32 (O, 2, gh, gw) flows of frames panned and zoomed over a textured scene, with sensor noise."""
    rng = np.random.default_rng(7)
    scene = np.zeros((640, 896), np.float32)
    for sigma, weight in ((16, 1.0), (4, 0.6), (1.5, 0.3)):   # coarse shading, objects, fine texture
        scene += weight * cv2.GaussianBlur(rng.random(scene.shape).astype(np.float32), (0, 0), sigma) * sigma
    scene = cv2.normalize(scene, None, 0, 255, cv2.NORM_MINMAX)
    video = []
    for i in range(frames + 4):
        zoom = 1 + 0.01 * i
        m = np.float32([[zoom, 0.05 * np.sin(i / 5), 100 + 2.5 * i], [0, zoom, 80 + 1.2 * i]])
        frame = cv2.warpAffine(scene, m, (448, 320), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        frame = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        video.append(gray_from_bgr(cv2.imdecode(buf, cv2.IMREAD_COLOR)))
    grid = params.grid(320, 448)
    return [np.stack([to_grid(farneback(video[k], video[k + t], params.farneback), grid) for t in params.offsets])
            for k in range(2, frames + 2)]


def storage(flows: list[np.ndarray], work: Path, farneback_ms_per_frame: float) -> dict:
    """Bytes, write and read cost and error of each (dtype, compression) on float32 flows (O, 2, gh, gw)."""
    results = {}
    stack = np.stack(flows)
    for dtype, compression, step in CANDIDATES:
        params = FlowParams(dtype=dtype, compression=compression, quant_step=step)
        name = storage_name(params)
        path = work / f"{name.replace(':', '-').replace('/', '_')}.h5"
        start = time.perf_counter()
        with h5py.File(path, "w") as f:
            encoded = encode(stack, params)
            d = f.create_dataset("flows", data=encoded, chunks=(1, *stack.shape[1:]), **parse_compression(compression))
            stored_bytes = d.id.get_storage_size()
        write = (time.perf_counter() - start) / len(flows)
        start = time.perf_counter()
        with h5py.File(path, "r") as f:
            back = np.stack([f["flows"][i].astype(np.float32) for i in range(len(flows))])
        read = (time.perf_counter() - start) / len(flows)
        results[name] = {
            "bytes_per_annotated_frame": round(stored_bytes / len(flows)),
            "write_ms_per_frame": round(write * 1e3, 3), "read_ms_per_frame": round(read * 1e3, 3),
            "write_cost_vs_farneback": round(write * 1e3 / farneback_ms_per_frame, 4),
            "max_abs_error_grid_px": float(np.abs(back - stack).max()),
        }
    return results


def storage_name(params: FlowParams) -> str:
    step = "none" if params.quant_step is None else f"1/{round(1 / params.quant_step)}"
    return f"{params.dtype}:{params.compression}:q{step}"


def choose(results: dict) -> str:
    """Smallest storage within MAX_ERROR grid pixels whose writing costs < MAX_WRITE_SHARE of Farneback."""
    ok = {k: v for k, v in results.items()
          if v["max_abs_error_grid_px"] <= MAX_ERROR and v["write_cost_vs_farneback"] < MAX_WRITE_SHARE}
    return min(ok, key=lambda k: ok[k]["bytes_per_annotated_frame"])


def main(argv: list[str]) -> None:
    cv2.setNumThreads(1)
    params = FlowParams()
    workers = int(argv[0]) if argv else min(os.cpu_count() or 1, 16)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prep = make_prep(work)
        load_before = os.getloadavg()[0]

        cost = cost_ratio(prep, params)
        serial = cost["pipeline_s"]
        emit("flow_cost_ratio", round(cost["pipeline_s"] / cost["bare_s"], 3), "x", 1.25,
             pipeline_ms_per_flow=round(cost["pipeline_s"] / cost["flows"] * 1e3, 2),
             bare_farneback_ms_per_call=round(cost["bare_s"] / cost["calls"] * 1e3, 2),
             pipeline_stages_ms_per_flow=cost["stages_ms_per_flow"],
             plan_and_index_s=round(cost["overhead_s"], 3), flows=cost["flows"], farneback_calls=cost["calls"],
             frames="320x448", stored=storage_name(params),
             note="pipeline: per video, compute_video_flows (decode from PREP, Farneback, resize, round, compress, "
                  "write) + compute_flows' planning and index; bare: the same Farneback calls on grey frames "
                  "decoded beforehand; best of 2 per video, interleaved")

        reference = flow_arrays(prep)
        local = parallel_local(prep, workers)
        cluster = parallel_scheduler(prep, workers, work)
        identical = flow_arrays(prep) == reference

        def whole_cores(r: dict) -> float:   # the efficiency had every task had a whole core while it ran
            return round(serial * cost["task_cpu_share"] / (workers * r["seconds"] * r["task_cpu_share"]), 3)

        def details(prefix: str, r: dict) -> dict:
            return {f"{prefix}_s": round(r["seconds"], 3),
                    f"{prefix}_worker_busy_fraction": round(r["worker_busy_fraction"], 3),
                    f"{prefix}_task_cpu_share": round(r["task_cpu_share"], 3),
                    f"{prefix}_task_cpu_vs_serial": round(r["task_thread_cpu_s"] / cost["task_thread_cpu_s"], 3),
                    f"{prefix}_efficiency_with_whole_cores": whole_cores(r)}

        emit("flow_parallel_efficiency", round(serial / (workers * local["seconds"]), 3), "fraction", 0.85,
             workers=workers, serial_s=round(serial, 3), serial_task_cpu_share=round(cost["task_cpu_share"], 3),
             **details("local_cluster", local), local_cluster_startup_s=round(local["startup_s"], 3),
             scheduler_worker_efficiency=round(serial / (workers * cluster["seconds"]), 3),
             **details("scheduler_worker", cluster), scheduler_worker_flows_identical_to_serial=identical,
             flows=cost["flows"], cpu_count=os.cpu_count(),
             load_average_before=round(load_before, 2), load_average_after=round(os.getloadavg()[0], 2),
             note="throughput with N workers / (N x serial throughput), cluster start-up excluded, best of 3; serial: "
                  "the per-video best of the cost run (optimistic: the efficiency is conservative). busy fraction: "
                  "task time / (N x wall); cpu share: CPU / wall time of the tasks (below 1: other processes had the "
                  "cores); cpu_vs_serial: CPU seconds of the same tasks in parallel / serially; with_whole_cores: "
                  "the efficiency with both runs' task times scaled to a whole core")

        speed = read_speedup(prep, params)
        emit("flow_read_speedup", round(speed["compute_ms"] / speed["read_ms"], 1), "x", 20,
             read_ms=round(speed["read_ms"], 3), read_first_of_video_ms=round(speed["read_cold_ms"], 3),
             compute_ms=round(speed["compute_ms"], 2), note="FlowReader.read of one annotated frame (4 flows, open "
             "handle) vs decoding its 5 frames from PREP and running Farneback + resize")

        index = json.loads((prep / "flows" / "index.json").read_text())
        farneback_ms_per_frame = cost["bare_s"] / cost["calls"] * 1e3 * len(params.offsets)
        synthetic = []
        for job in build_flow_jobs(prep, params)[0]:
            gray = read_gray_frames(job.prep_shard, set(job.frames) | {t for ts in job.targets for t in ts})
            synthetic += [frame_flows(gray, k, ts, params) for k, ts in zip(job.frames, job.targets)]
        measured = {"synthetic_a2d": storage(synthetic, work, farneback_ms_per_frame),
                    "camera_motion": storage(camera_motion_flows(params), work, farneback_ms_per_frame)}
        chosen = choose(measured["camera_motion"])
        default = storage_name(params)
        emit("flow_bytes_per_annotated_frame", round(index["counts"]["bytes"] / index["counts"]["annotated_frames"]),
             "bytes", None, default=default, best_by_rule=chosen,
             rule=f"smallest storage of camera-motion flows within {MAX_ERROR} grid px whose writing costs "
                  f"< {MAX_WRITE_SHARE:.0%} of their Farneback time",
             camera_motion_default_bytes=measured["camera_motion"][default]["bytes_per_annotated_frame"],
             raw_float16_bytes=len(params.offsets) * 2 * 80 * 112 * 2, measurements=measured,
             note="value: whole shard files (HDF5 metadata included) of the synthetic set / annotated frames; "
                  "measurements: the flows dataset's stored bytes only")


if __name__ == "__main__":
    main(sys.argv[1:])
