"""`losh compute-flows --data PREP --verify`: re-read every flow shard and recompute a sample of flows.

Checks, with the parameters the index records: every annotated frame of the splits it covers is there; every
shard is readable, belongs to the index's parameters and PREP's frames, has the right shapes and
dtypes and only finite values; a random sample of frames recomputed from PREP matches what is
stored within the storage rounding (half a quant_step, then half a float16 ulp).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from losh.pipeline.flows import FlowJob, build_flow_jobs, frame_flows, index_splits, read_gray_frames
from losh.schemas.flow_reader import load_index
from losh.schemas.flows import FlowParams, check_shard_attrs
from losh.schemas.prepared import SchemaError

SLACK = 1e-3   # grid pixels, on top of the rounding bound: other CPUs' float arithmetic


@dataclass
class FlowVerifyReport:
    shards: int = 0
    frames: int = 0
    recomputed: int = 0
    max_error: float = 0.0        # largest |stored - recomputed| over the sample, grid pixels
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_shard(path: Path, job: FlowJob, entry: dict, index: dict, params: FlowParams) -> list[str]:
    with h5py.File(path, "r") as f:
        check_shard_attrs(dict(f.attrs), index, str(path))
        if f.attrs["inputs_hash"] != job.inputs_hash() or f.attrs["inputs_hash"] != entry["inputs_hash"]:
            return [f"{path}: computed from other PREP frames than PREP now holds; re-run `losh compute-flows`"]
        k, o = len(job.frames), len(params.offsets)
        grid = tuple(int(x) for x in f.attrs["grid"])
        if grid != params.grid(*(int(x) for x in f.attrs["frame_size"])) or list(grid) != entry["grid"]:
            return [f"{path}: grid {grid} does not match frame size {list(f.attrs['frame_size'])} at stride "
                    f"{params.stride}"]
        expected = {"frames": ((k,), np.int32), "targets": ((k, o), np.int32), "valid": ((k, o), np.bool_),
                    "flows": ((k, o, 2, *grid), np.dtype(params.dtype))}
        problems = []
        for name, (shape, dtype) in expected.items():
            if name not in f:
                problems.append(f"{path}: no dataset {name!r}")
            elif f[name].shape != shape or f[name].dtype != dtype:
                problems.append(f"{path}: {name} is {f[name].dtype}{f[name].shape}, expected {np.dtype(dtype)}{shape}")
        if problems:
            return problems
        if f["frames"][()].tolist() != list(job.frames) or entry["frames"] != list(job.frames):
            problems.append(f"{path}: frames {f['frames'][()].tolist()} but PREP annotates {list(job.frames)}")
        if f["targets"][()].tolist() != [list(t) for t in job.targets]:
            problems.append(f"{path}: target frames differ from PREP's windows")
        if f["valid"][()].tolist() != [list(v) for v in job.valid]:
            problems.append(f"{path}: valid flags differ from PREP's windows")
        flows = f["flows"][()]
        if flows.dtype.kind == "f" and not np.isfinite(flows).all():
            problems.append(f"{path}: {int((~np.isfinite(flows)).sum())} flow values are not finite")
        return problems


def verify_flows(prep: Path, samples: int = 8, seed: int = 0) -> FlowVerifyReport:
    """Check the flows of PREP; `samples` annotated frames are recomputed and compared."""
    prep = Path(prep).resolve()
    report = FlowVerifyReport()
    try:
        index = load_index(prep)
    except (FileNotFoundError, SchemaError) as e:
        report.problems.append(str(e))
        return report
    params = FlowParams.from_dict(index["params"])
    try:
        jobs, _ = build_flow_jobs(prep, params, index_splits(index))   # the splits the index covers
    except (FileNotFoundError, SchemaError, ValueError) as e:
        report.problems.append(f"PREP cannot be read with the index's parameters: {e}")
        return report
    entries = {e["video_id"]: e for e in index["videos"]}
    for vid in sorted(set(entries) - {j.video_id for j in jobs}):
        report.problems.append(f"flows/index.json lists video {vid!r}, which PREP does not have")
    checked: list[FlowJob] = []
    for job in jobs:
        entry = entries.get(job.video_id)
        if entry is None:
            report.problems.append(f"flows/index.json does not cover video {job.video_id!r} "
                                   f"({len(job.frames)} annotated frames)")
            continue
        path = prep / entry["file"]
        if not path.exists():
            report.problems.append(f"{path}: missing")
            continue
        try:
            problems = _check_shard(path, job, entry, index, params)
        except (OSError, KeyError, ValueError) as e:   # SchemaError is a ValueError
            problems = [f"{path}: unreadable ({e})" if not isinstance(e, SchemaError) else str(e)]
        report.problems += problems
        report.shards += 1
        report.frames += len(job.frames)
        if not problems:
            checked.append(job)

    pairs = [(job, i) for job in checked for i in range(len(job.frames))]
    for job, i in random.Random(seed).sample(pairs, min(samples, len(pairs))):
        frame, targets = job.anchor_frames[i], job.targets[i]
        gray = read_gray_frames(job.prep_shard, {frame, *targets})
        fresh = frame_flows(gray, frame, targets, params)
        with h5py.File(prep / entries[job.video_id]["file"], "r") as f:
            stored = f["flows"][i].astype(np.float32)
        error = np.abs(stored - fresh)
        report.max_error = max(report.max_error, float(error.max()))
        report.recomputed += 1
        bad = error > params.storage_error(fresh) + SLACK
        if bad.any():
            report.problems.append(f"{job.video_id} frame {frame}: {int(bad.sum())} stored flow values differ from "
                                   f"the recomputed ones by up to {float(error.max()):.4g} grid pixels")
    return report
