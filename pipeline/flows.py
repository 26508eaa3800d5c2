"""`losh compute-flows --data PREP`: the Farneback flows of every annotated frame, in parallel with Dask.

One task per video: it decodes the video's needed frames once from its PREP shard, computes the
flows from each annotated frame k to its stored frames k+t, and writes PREP/flows/<video_id>.h5
under a temporary name, then renames it; only this process's client writes flows/index.json, last.
A shard is reused only when its hash of (parameters, PREP shard, frames) equals the requested one;
any other shard of that video is recomputed, so a flow set never mixes parameters.

Splits: only training needs flows (L_fbc is a training loss), so `--split train` (the CLI default)
computes the annotated frames of training samples only. The index records the splits it covers
(`splits`; an index without it covers all). A run keeps covering the splits of the previous index
when the parameters and PREP are the same, so `--split all` after `--split train` computes only
what is missing (the test videos), and `--split train` after `all` computes nothing.
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

from losh.pipeline.flow_field import encode, farneback, gray_from_bgr, to_grid
from losh.schemas.atomic import atomic_path, atomic_write_text
from losh.schemas.flows import (
    FLOWS_DIR,
    FLOWS_SCHEMA,
    FLOWS_VERSION,
    INDEX_FILE,
    UNITS,
    FlowParams,
    flows_dir,
    index_splits,
    parse_compression,
)
from losh.schemas.frame_codec import decode_frame
from losh.schemas.locks import folder_lock, refuse_if_locked
from losh.schemas.prepared import SPLITS, SchemaError, read_json
from losh.schemas.prepared_reader import load_manifest, load_records
from losh.schemas.progress import progress_bar
from losh.schemas.safe_paths import join_ids

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters


class FlowComputeError(RuntimeError):
    """Some videos could not get their flows (the others are stored; a re-run retries them)."""


@dataclass(frozen=True)
class FlowJob:
    """The flows of one video: from each annotated frame to its stored frames k+t (clamped)."""

    video_id: str
    prep_shard: str                        # absolute path of PREP/shards/<video_id>.h5
    out: str                               # absolute path of PREP/flows/<video_id>.h5
    frames: tuple[int, ...]                # annotated frames, ascending
    targets: tuple[tuple[int, ...], ...]   # per frame, the stored frame of each offset
    valid: tuple[tuple[bool, ...], ...]    # per frame, k+t inside the video
    prep_shard_hash: str
    params: FlowParams
    anchors: tuple[int, ...] = ()          # per frame, the stored frame the flows start from (window[w//2]);
                                           # () = the annotated frames themselves

    @property
    def anchor_frames(self) -> tuple[int, ...]:
        return self.anchors or self.frames

    def inputs_hash(self) -> str:
        spec = {"params": self.params.hash(), "prep_shard": self.prep_shard_hash, "frames": self.frames,
                "targets": self.targets, "valid": self.valid, "anchors": self.anchor_frames}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FlowRun:
    index: dict
    splits: tuple[str, ...] = SPLITS                     # the splits the index covers
    computed: list[str] = field(default_factory=list)   # videos whose shard this run wrote
    resumed: list[str] = field(default_factory=list)    # videos whose finished shard was kept
    seconds: float = 0.0                                 # wall time of compute_flows
    task_seconds: dict[str, dict] = field(default_factory=dict)   # per computed video: decode, flows, write, wall, cpu



def window_splits(manifest: dict) -> tuple[str, ...]:
    """The splits of PREP whose samples are windows (those L_fbc can train on); whole-video splits have none."""
    return tuple(s for s in SPLITS if manifest["splits"].get(s, {}).get("kind") == "window")


def nothing_to_compute(manifest: dict) -> str | None:
    """Why a prepared set has no flows to compute (None: it has some): still images (RefCOCO) have no motion."""
    if window_splits(manifest) or not any(info.get("kind") == "image" for info in manifest["splits"].values()):
        return None
    return (f"this {manifest['dataset']} set holds still images: there is no optical flow to compute (train on it "
            "with --set loss.fbc=0)")


def parse_split(split: str, manifest: dict | None = None) -> tuple[str, ...]:
    """The splits of a --split value: a window split of PREP (A2D: train, test), or all of them."""
    choices = window_splits(manifest) if manifest is not None else ("train", "test")
    if split not in (*choices, "all"):
        raise ValueError(f"split must be one of {', '.join((*choices, 'all'))}, got {split!r}")
    return choices if split == "all" else (split,)


def offset_targets(window: list[int], frame: int, offsets: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Stored frame and validity of each offset, read off the sample's window by position.

    The window (MTTR's, clamped to the decoded video) stands for frame k at position w//2 (its anchor,
    `window[w//2]`: k itself, or the video's last frame when k lies past the decoded end, as MTTR
    clamps), so position w//2 + t holds the frame the model sees there and the flow runs from the anchor
    to it. It is valid when both are the real frames k and k+t: never when k lies past the end (the
    window then shows other frames than k's neighbours). t outside the window's reach cannot be served.
    """
    w = len(window)
    centre = w // 2
    anchor = window[centre]
    if anchor != frame and not (anchor < frame and set(window[centre:]) == {anchor}):
        raise SchemaError(f"window {window} does not stand for annotated frame {frame} at position {centre}")
    targets, valid = [], []
    for t in offsets:
        if not 0 <= centre + t < w:
            lo, hi = -centre, w - 1 - centre
            raise ValueError(f"offset {t:+d} needs frame k{t:+d}, but PREP stores windows of {w} frames "
                             f"(offsets {lo:+d}..{hi:+d}); re-run prepare-data with a larger --window "
                             f"(>= {2 * abs(t) + (1 if t > 0 else 0)}) or choose --offsets within {lo:+d}..{hi:+d}")
        targets.append(window[centre + t])
        valid.append(anchor == frame and window[centre + t] == frame + t)
    return tuple(targets), tuple(valid)


def build_flow_jobs(prep: Path, params: FlowParams, splits: tuple[str, ...] = SPLITS,
                    manifest: dict | None = None) -> tuple[list[FlowJob], dict]:
    """One job per video of PREP, covering every annotated frame among its records of `splits`
    (`manifest`: PREP's, when the caller has already read it)."""
    prep = Path(prep).resolve()
    manifest = manifest if manifest is not None else load_manifest(prep)
    records = [r for r in load_records(prep, manifest) if r.split in splits]
    per_video: dict[str, dict[int, tuple[tuple[int, ...], tuple[bool, ...]]]] = {}
    anchor_of: dict[tuple[str, int], int] = {}
    shard_of: dict[str, str] = {}
    for r in records:
        frames = per_video.setdefault(r.video_id, {})
        if r.frame not in frames:
            frames[r.frame] = offset_targets(r.window, r.frame, params.offsets)
            anchor_of[r.video_id, r.frame] = r.window[r.annotated_position]
        shard_of[r.video_id] = r.shard
    jobs = []
    for vid in sorted(per_video):
        shard = prep / shard_of[vid]
        try:
            with h5py.File(shard, "r") as f:
                prep_hash = str(f.attrs["settings_hash"])
        except (OSError, KeyError) as e:
            raise SchemaError(f"{shard}: unreadable PREP shard ({e}); re-run prepare-data") from e
        frames = sorted(per_video[vid])
        jobs.append(FlowJob(vid, str(shard), str(join_ids(flows_dir(prep), f"{vid}.h5")), tuple(frames),
                            tuple(per_video[vid][k][0] for k in frames), tuple(per_video[vid][k][1] for k in frames),
                            prep_hash, params, tuple(anchor_of[vid, k] for k in frames)))
    return jobs, manifest


def read_gray_frames(prep_shard: str, numbers: set[int]) -> dict[int, np.ndarray]:
    """Grey stored frames of a PREP shard, each decoded once."""
    with h5py.File(prep_shard, "r") as f:
        stored = f["frame_numbers"][()]
        position = {int(n): i for i, n in enumerate(stored)}
        missing = sorted(set(numbers) - set(position))
        if missing:
            raise SchemaError(f"{prep_shard}: frames {missing} are needed for the flows but not stored")
        return {n: gray_from_bgr(decode_frame(f["frames"][position[n]])) for n in sorted(numbers)}


def frame_flows(gray: dict[int, np.ndarray], frame: int, targets: tuple[int, ...], params: FlowParams,
                cache: dict | None = None) -> np.ndarray:
    """(O, 2, gh, gw) float32 flows of one annotated frame, on the stored grid."""
    h, w = gray[frame].shape
    grid = params.grid(h, w)
    cache = {} if cache is None else cache
    out = np.empty((len(targets), 2, *grid), dtype=np.float32)
    for o, target in enumerate(targets):
        if (frame, target) not in cache:   # clamped offsets can repeat a pair
            cache[frame, target] = to_grid(farneback(gray[frame], gray[target], params.farneback), grid)
        out[o] = cache[frame, target]
    return out


def keep_freed_memory() -> None:
    """Let glibc keep and reuse freed memory instead of handing it back to the OS.

    Each Farneback call allocates and frees ~10 MB of pyramids; with glibc's defaults, and even more
    with the MALLOC_TRIM_THRESHOLD_=65536 that Dask's nanny gives its workers, every call faults
    those pages in again: 12-25% extra CPU time, measured (see the README). No-op without mallopt.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)   # glibc's maximum; fixes the threshold (no dynamic change)


def compute_video_flows(job: FlowJob) -> dict:
    """The task: compute and write one video's flow shard; returns its summary for the index."""
    cv2.setNumThreads(1)   # one task per core: OpenCV's own threads would oversubscribe
    keep_freed_memory()
    params = job.params
    clock, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
    gray = read_gray_frames(job.prep_shard, set(job.anchor_frames) | {t for ts in job.targets for t in ts})
    decoded = time.perf_counter()
    sizes = {g.shape for g in gray.values()}
    if len(sizes) != 1:
        raise SchemaError(f"{job.prep_shard}: stored frames differ in size {sorted(sizes)}")
    (h, w), = sizes
    grid = params.grid(h, w)
    stored = np.empty((len(job.frames), len(params.offsets), 2, *grid), dtype=params.dtype)
    cache: dict = {}
    for i, (anchor, targets) in enumerate(zip(job.anchor_frames, job.targets)):
        stored[i] = encode(frame_flows(gray, anchor, targets, params, cache), params)
    computed = time.perf_counter()

    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:   # the shard appears only when complete
        f.create_dataset("frames", data=np.asarray(job.frames, dtype=np.int32))
        f.create_dataset("targets", data=np.asarray(job.targets, dtype=np.int32))
        f.create_dataset("valid", data=np.asarray(job.valid, dtype=bool))
        f.create_dataset("flows", data=stored, chunks=(1, *stored.shape[1:]),   # one chunk per annotated frame
                         **parse_compression(params.compression))
        f.attrs.update({
            "schema": FLOWS_SCHEMA, "version": FLOWS_VERSION, "video_id": job.video_id,
            "params": json.dumps(params.to_dict(), sort_keys=True), "params_hash": params.hash(),
            "inputs_hash": job.inputs_hash(), "prep_shard_hash": job.prep_shard_hash,
            "frame_size": [h, w], "grid": list(grid), "vector_scale": [grid[1] / w, grid[0] / h],
            "units": UNITS, "dtype": params.dtype, "compression": params.compression})
    summary = _summary(job, (h, w), grid, out.stat().st_size)
    end = time.perf_counter()
    summary["seconds"] = {"decode": decoded - clock, "flows": computed - decoded, "write": end - computed,
                          "wall": end - clock, "cpu": time.process_time() - cpu,
                          "thread_cpu": time.thread_time() - thread}
    return summary


def _summary(job: FlowJob, size: tuple[int, int], grid: tuple[int, int], nbytes: int) -> dict:
    return {"video_id": job.video_id, "file": f"{FLOWS_DIR}/{Path(job.out).name}", "frames": list(job.frames),
            "inputs_hash": job.inputs_hash(), "frame_size": list(size), "grid": list(grid),
            "flows": len(job.frames) * len(job.params.offsets),
            "invalid_flows": sum(not v for vs in job.valid for v in vs), "bytes": nbytes}


def finished_summary(job: FlowJob) -> dict | None:
    """The summary of the video's existing shard if it holds exactly the requested flows, else None."""
    path = Path(job.out)
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("params_hash") != job.params.hash() or f.attrs.get("inputs_hash") != job.inputs_hash():
                return None   # other parameters or other PREP frames: recompute, never mix
            size, grid = tuple(int(x) for x in f.attrs["frame_size"]), tuple(int(x) for x in f.attrs["grid"])
            if f["flows"].shape != (len(job.frames), len(job.params.offsets), 2, *grid):
                return None
    except (OSError, KeyError, ValueError):
        return None   # unreadable leftovers are recomputed
    return _summary(job, size, grid, path.stat().st_size)


def _run_in_process(jobs: list[FlowJob]) -> Iterator[tuple[FlowJob, dict | None, str | None]]:
    for job in jobs:
        try:
            yield job, compute_video_flows(job), None
        except Exception as e:  # reported per video, like the Dask path
            yield job, None, f"{type(e).__name__}: {e}"


def start_local_cluster(workers: int, scratch: str | None = None):
    """`workers` single-threaded worker processes on this machine (a distributed.LocalCluster), their scratch
    space in `scratch` (a folder of this run's own, not Dask's shared, predictable /tmp/dask-scratch-space)."""
    import dask
    from distributed import LocalCluster

    # no statistical profiler: it samples the task thread every 10 ms (~2.5% CPU, measured)
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR, local_directory=scratch)


def _run_dask(jobs: list[FlowJob], workers: int, scheduler: str | None,
              prep: Path) -> Iterator[tuple[FlowJob, dict | None, str | None]]:
    """Submit one task per job to a local cluster or to the scheduler at `scheduler`; yield as they end."""
    from distributed import Client, as_completed

    cluster = scratch = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        scratch = tempfile.mkdtemp(prefix="losh-dask-")       # private to this run (mode 0700)
        cluster = start_local_cluster(workers, scratch)
        client = Client(cluster)
    try:
        if scheduler:
            client.wait_for_workers(1, timeout=60)
            sees = client.run(os.path.isdir, str(prep))
            blind = sorted(w for w, ok in sees.items() if not ok)
            if blind:
                raise FlowComputeError(f"workers {blind} of {scheduler} cannot see {prep}: the scheduler's "
                                       "workers must share this file system (same absolute path)")
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(compute_video_flows, job, key=f"losh-flows-{run}-{job.video_id}"): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield job, future.result(), None
            except Exception as e:
                yield job, None, f"{type(e).__name__}: {e}"
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def previous_splits(prep: Path, params: FlowParams, manifest: dict) -> tuple[str, ...]:
    """The splits the existing index covers, if it was written with these parameters for this PREP."""
    path = flows_dir(prep) / INDEX_FILE
    try:
        index = read_json(path)
        if index.get("params_hash") != params.hash() or index.get("prep_settings_hash") != manifest["settings_hash"]:
            return ()
        return index_splits(index)
    except (OSError, SchemaError, AttributeError):
        return ()   # no usable index: cover only what is asked


def compute_flows(prep: Path, params: FlowParams = FlowParams(), *, split: str = "all", workers: int | None = None,
                  scheduler: str | None = None, progress: bool = True) -> FlowRun:
    """`_compute_flows` holding PREP/flows' lock (one writer; refused at once while another runs, or while
    `prepare-data` writes PREP)."""
    prep = Path(prep).resolve()
    refuse_if_locked(prep, "losh compute-flows")
    if (prep / "manifest.json").is_file():
        note = nothing_to_compute(load_manifest(prep))
        if note:   # before flows/ exists
            raise ValueError(note)
    with folder_lock(flows_dir(prep), "losh compute-flows"):
        return _compute_flows(prep, params, split=split, workers=workers, scheduler=scheduler, progress=progress)


def _compute_flows(prep: Path, params: FlowParams = FlowParams(), *, split: str = "all", workers: int | None = None,
                   scheduler: str | None = None, progress: bool = True) -> FlowRun:
    """Compute the missing flow shards of PREP for the annotated frames of `split` (train, test or
    all; plus the splits the existing index covers with the same parameters), then write
    flows/index.json.

    workers: local Dask worker processes (default: all cores); 0 runs the tasks in this process
    without Dask (for debugging). scheduler: address of a running Dask scheduler (tcp://host:port)
    whose workers see PREP at the same path; `workers` is then ignored.
    """
    clock = time.perf_counter()
    prep = Path(prep).resolve()
    params = params.validate()
    manifest = load_manifest(prep)
    asked = parse_split(split, manifest)
    splits = tuple(s for s in SPLITS if s in set(asked) | set(previous_splits(prep, params, manifest)))
    jobs, _ = build_flow_jobs(prep, params, splits, manifest)
    if not jobs:
        raise SchemaError(f"{prep} has no {'+'.join(splits)} sample: no flows to compute")
    out_dir = flows_dir(prep)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)   # leftovers of a killed run
    summaries: dict[str, dict] = {}
    todo: list[FlowJob] = []
    for job in jobs:
        done = finished_summary(job)
        if done is None:
            todo.append(job)
        else:
            summaries[job.video_id] = done
    run = FlowRun(index={}, resumed=sorted(summaries), splits=splits)
    index_path = out_dir / INDEX_FILE
    if todo:
        index_path.unlink(missing_ok=True)   # no index may describe a half-updated set
        if scheduler:
            results = _run_dask(todo, 0, scheduler, prep)
        elif workers == 0:
            results = _run_in_process(todo)
        else:
            results = _run_dask(todo, min(workers or os.cpu_count() or 1, len(todo)), None, prep)
        failures = []
        bar = progress_bar(total=len(jobs), initial=len(summaries), desc="compute-flows", unit="video",
                           disable=not progress)
        for job, summary, error in results:
            if error is None:
                run.task_seconds[job.video_id] = summary.pop("seconds")
                summaries[job.video_id] = summary
                run.computed.append(job.video_id)
            else:
                failures.append(f"{job.video_id}: {error}")
            bar.update()
        bar.close()
        if failures:
            raise FlowComputeError(f"{len(failures)} of {len(jobs)} videos failed (the other shards are kept; "
                                   f"re-run to retry): " + "; ".join(failures[:5]))
    entries = [summaries[job.video_id] for job in jobs]
    index = {
        "schema": FLOWS_SCHEMA, "version": FLOWS_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params.to_dict(), "params_hash": params.hash(), "prep_settings_hash": manifest["settings_hash"],
        "splits": list(splits),
        "videos": [{k: e[k] for k in ("video_id", "file", "frames", "inputs_hash", "frame_size", "grid")}
                   for e in entries],
        "counts": {"videos": len(entries), "annotated_frames": sum(len(e["frames"]) for e in entries),
                   "flows": sum(e["flows"] for e in entries), "invalid_flows": sum(e["invalid_flows"] for e in entries),
                   "bytes": sum(e["bytes"] for e in entries)},
    }
    atomic_write_text(index_path, json.dumps(index, indent=1))
    run.index = index
    run.computed.sort()
    run.seconds = time.perf_counter() - clock
    return run
