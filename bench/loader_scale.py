"""Loader memory and open files at A2D scale: many prepared shards + flow shards, 4 DataLoader workers.

A real A2D run has ~3,000 prepared shards and ~3,000 flow shards. The template videos are written
by the real stages (synth -> prepare-data -> compute-flows); the N-video set is made from copies of
their shards under new video ids (records, manifest and flow index rewritten to match), which the
readers accept as they would the real stages' output. RVOSDataset(with_flows) then reads the same
number of samples through a DataLoader with 4 workers, for N = 300 and N = 3,000 shards, with the
default bound on open files and without one (LOSH_MAX_OPEN_SHARDS=0).

Lines: `loader_worker_peak_rss` (MiB, mean VmHWM of the workers) per (shards, bound), with the open
descriptors, the worker-private memory (USS) and the read rate; `loader_rss_growth_ratio` (bounded
peak RSS at 3,000 shards / at 300: flat is 1.0) and `loader_worker_open_fds` (bounded, at 3,000).
`python -m bench.loader_scale [SAMPLES] [--sizes 300,3000]` (default 1,000 samples per run).

The workers measured are the loader's own: the child processes that appear while it starts (the benchmark's
children before it, e.g. another part's leftovers, are not counted).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import torch
from torch.utils.data import DataLoader, Subset

from losh.data.dataset import RVOSDataset, collate
from losh.pipeline.flows import compute_flows
from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.pipeline.synth import write_synthetic_a2d
from losh.schemas.flows import FLOWS_DIR, INDEX_FILE
from losh.schemas.open_files import DEFAULT_MAX_OPEN, MAX_OPEN_ENV
from losh.schemas.prepared import read_json

SIZES = (300, 3000)
WORKERS = 4
TEMPLATE_VIDEOS = 4


def emit(name: str, value: float, unit: str, target: float | None, **details) -> None:
    print(json.dumps({"bench": name, "value": value, "unit": unit, "target": target, **details}), flush=True)


def make_template(work: Path, height: int = 128, width: int = 176) -> Path:
    """A small PREP with flows, written by the real stages."""
    write_synthetic_a2d(work / "raw", videos=TEMPLATE_VIDEOS + 1, seed=0, height=height, width=width, frames=16,
                        annotated_per_video=2, progress=False)
    prep = work / "template"
    prepare_a2d(work / "raw", prep, short_source="manual",
                settings=PrepareSettings(window=8, short_side=height, max_long_side=width), workers=1, progress=False)
    compute_flows(prep, split="all", workers=0, progress=False)
    return prep


def _copy_shard(src: Path, dst: Path, video_id: str) -> None:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:   # the copy names its own video, as a real shard does
        f.attrs["video_id"] = video_id


def scale_prep(template: Path, out: Path, videos: int) -> Path:
    """PREP of `videos` videos (all train), each a copy of a template video's shard and flow shard."""
    manifest = read_json(template / "manifest.json")
    index = read_json(template / FLOWS_DIR / INDEX_FILE)
    records: dict[str, list[dict]] = {}
    for line in (template / manifest["records_file"]).read_text().splitlines():
        r = json.loads(line)
        records.setdefault(r["video_id"], []).append(r)
    entries = {e["video_id"]: e for e in index["videos"]}
    sources = sorted(set(records) & set(entries))
    (out / "shards").mkdir(parents=True)
    (out / FLOWS_DIR).mkdir()
    all_records, shards, flow_entries = [], [], []
    for i in range(videos):
        src = sources[i % len(sources)]
        vid = f"v{i:05d}"
        _copy_shard(template / "shards" / f"{src}.h5", out / "shards" / f"{vid}.h5", vid)
        _copy_shard(template / entries[src]["file"], out / FLOWS_DIR / f"{vid}.h5", vid)
        for r in records[src]:
            all_records.append({**r, "video_id": vid, "sample_id": r["sample_id"].replace(src, vid, 1),
                                "shard": f"shards/{vid}.h5", "split": "train"})
        shards.append({"video_id": vid, "file": f"shards/{vid}.h5", "samples": len(records[src])})
        flow_entries.append({**entries[src], "video_id": vid, "file": f"{FLOWS_DIR}/{vid}.h5"})
    all_records.sort(key=lambda r: r["sample_id"])
    (out / manifest["records_file"]).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in all_records))
    shutil.copyfile(template / manifest["report_file"], out / manifest["report_file"])
    counts = {**manifest["counts"], "videos": videos, "samples": len(all_records), "samples_train": len(all_records),
              "samples_test": 0}
    (out / "manifest.json").write_text(json.dumps({**manifest, "counts": counts, "shards": shards}, indent=1))
    (out / FLOWS_DIR / INDEX_FILE).write_text(json.dumps({**index, "videos": flow_entries, "splits": ["train"]}))
    return out


def _children() -> set[int]:
    """The pids of this process's live children."""
    me = os.getpid()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:   # the field after the state: the parent
                pids.append(int(name))
    return set(pids)


def worker_usage(pid: int) -> dict:
    """Peak and current RSS, private memory (USS) in MiB, and open descriptors of a process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kib = lambda text: int(text.split()[0])   # noqa: E731
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    private = sum(int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean", "Private_Dirty")))
    fds = os.listdir(f"/proc/{pid}/fd")
    h5 = 0
    for fd in fds:
        try:
            h5 += os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".h5")
        except OSError:
            pass
    return {"peak_rss_mib": kib(status["VmHWM"]) / 1024, "rss_mib": kib(status["VmRSS"]) / 1024,
            "uss_mib": private / 1024, "fds": len(fds), "h5_fds": h5}


def measure(prep: Path, shards: int, samples: int, max_open: int) -> dict:
    """Read `samples` samples of the first `shards` videos through 4 workers; usage of each worker."""
    os.environ[MAX_OPEN_ENV] = str(max_open)   # read by the readers' OpenFiles in this process
    dataset = RVOSDataset(prep, "train", with_flows=True)
    wanted = {f"v{i:05d}" for i in range(shards)}
    indices = [i for i, r in enumerate(dataset.data.records) if r.video_id in wanted]
    random.Random(0).shuffle(indices)   # samples of all `shards` videos, in random order
    order = [indices[i % len(indices)] for i in range(samples)]
    loader = DataLoader(Subset(dataset, order), batch_size=4, num_workers=WORKERS, collate_fn=collate,
                        persistent_workers=True, multiprocessing_context="fork")
    before = _children()
    start = time.perf_counter()
    read = sum(len(batch["sample_id"]) for batch in loader)
    seconds = time.perf_counter() - start
    workers = sorted(_children() - before)      # the loader's persistent workers: still alive, idle
    usage = [worker_usage(pid) for pid in workers]
    del loader
    if read != samples or len(usage) != WORKERS:
        raise RuntimeError(f"read {read} of {samples} samples through {len(usage)} new workers (expected {WORKERS})")
    mean = lambda key: sum(u[key] for u in usage) / len(usage)   # noqa: E731
    return {"shards": shards, "max_open_shards": max_open, "samples": samples,
            "peak_rss_mib": round(mean("peak_rss_mib"), 1), "peak_rss_mib_max": round(max(u["peak_rss_mib"] for u in usage), 1),
            "uss_mib": round(mean("uss_mib"), 1), "fds": round(mean("fds"), 1), "fds_max": max(u["fds"] for u in usage),
            "h5_fds_max": max(u["h5_fds"] for u in usage), "samples_per_s": round(samples / seconds, 1)}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")   # 4 workers on fewer cores: meant
    parser = argparse.ArgumentParser(prog="python -m bench.loader_scale")
    parser.add_argument("samples", nargs="?", type=int, default=1000, help="samples read per measurement")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="the two shard counts compared (comma-separated, small first)")
    args = parser.parse_args(argv)
    samples = args.samples
    sizes = tuple(int(v) for v in args.sizes.split(","))
    saved = os.environ.get(MAX_OPEN_ENV)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prep = scale_prep(make_template(work), work / "prep", max(sizes))
        build_s = time.perf_counter() - start
        results = {}
        try:
            for shards in sizes:
                for max_open in (DEFAULT_MAX_OPEN, 0):
                    r = results[shards, max_open] = measure(prep, shards, samples, max_open)
                    emit("loader_worker_peak_rss", r["peak_rss_mib"], "MiB", None, workers=WORKERS,
                         bound="none" if max_open == 0 else max_open, build_s=round(build_s, 1),
                         **{k: v for k, v in r.items() if k != "peak_rss_mib"})
        finally:
            if saved is None:
                os.environ.pop(MAX_OPEN_ENV, None)
            else:
                os.environ[MAX_OPEN_ENV] = saved
    small, large = results[sizes[0], DEFAULT_MAX_OPEN], results[sizes[-1], DEFAULT_MAX_OPEN]
    unbounded = results[sizes[-1], 0]
    emit("loader_rss_growth_ratio", round(large["peak_rss_mib"] / small["peak_rss_mib"], 3), "x", 1.1,
         shards=list(sizes), bounded_mib=[small["peak_rss_mib"], large["peak_rss_mib"]],
         unbounded_mib=[results[sizes[0], 0]["peak_rss_mib"], unbounded["peak_rss_mib"]],
         unbounded_ratio=round(unbounded["peak_rss_mib"] / results[sizes[0], 0]["peak_rss_mib"], 3),
         bench_s=round(time.perf_counter() - start, 1))
    emit("loader_worker_open_fds", large["fds_max"], "descriptors", 1024, shards=sizes[-1],
         h5_files_max=large["h5_fds_max"], bound_per_reader=DEFAULT_MAX_OPEN,
         unbounded_fds_max=unbounded["fds_max"], unbounded_h5_files_max=unbounded["h5_fds_max"])


if __name__ == "__main__":
    main(sys.argv[1:])
