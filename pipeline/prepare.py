"""`losh prepare-data`: raw A2D-Sentences -> PREP (manifest, sample records, per-video HDF5 shards).

One job per video, run in parallel processes; each job writes its own shard atomically and stores
its sample records and problems in the shard's attributes, so a re-run skips finished videos and
the assembled result does not depend on the number of workers.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.a2d import A2DRaw, CorruptMaskFile, DatasetRootError, Problem, list_annotated_frames, read_a2d, \
    read_frame_annotation
from schemas.frame_codec import encode_frame
from pipeline.masks import group_by_short, merge_masks
from pipeline.video import DECODERS, VideoUnreadable, decode_frames, resize_frame, resize_masks, target_size, \
    window_indices
from schemas.prepared import PREPARED_SCHEMA, PREPARED_VERSION, SampleRecord

SHORT_SOURCES = ("machine", "manual")


@dataclass(frozen=True)
class PrepareSettings:
    window: int = 8
    short_side: int = 320
    max_long_side: int = 576
    codec: str = "jpeg"
    jpeg_quality: int = 90
    decoder: str = "pyav"     # MTTR reads A2D with torchvision.io.read_video, i.e. PyAV (see pipeline/video.py)


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    split: str
    video_path: str
    annotation_dir: str
    orig_size: tuple[int, int]
    expected_annotated: int
    listed_frames: int                              # videoset.csv total_frames
    expressions: tuple[tuple[int, str, str], ...]   # (instance_id, long, short)
    settings: PrepareSettings
    shard_path: str

    def settings_hash(self) -> str:
        spec = {"version": PREPARED_VERSION, "split": self.split, "expressions": self.expressions,
                "settings": asdict(self.settings)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class VideoResult:
    video_id: str
    records: list[dict]
    problems: list[dict]
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False


def _worker_init() -> None:
    import cv2
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would oversubscribe


def _existing_result(job: VideoJob, digest: str) -> VideoResult | None:
    path = Path(job.shard_path)
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("settings_hash") != digest:
                return None  # other settings or inputs: recompute, never mix
            return VideoResult(job.video_id, json.loads(f.attrs["records"]), json.loads(f.attrs["problems"]),
                               json.loads(f.attrs["counts"]), True)
    except (OSError, KeyError, ValueError):
        return None  # unreadable leftovers are recomputed


def prepare_video(job: VideoJob) -> VideoResult:
    """Prepare one video: read its masks, decode and resize its windows, write its shard."""
    digest = job.settings_hash()
    done = _existing_result(job, digest)
    if done is not None:
        return done
    problems: list[Problem] = []
    vid = job.video_id
    ann_dir = Path(job.annotation_dir)

    def fail_all(reason: str) -> VideoResult:
        probs = [Problem(vid, reason, iid) for iid, _, _ in job.expressions]
        return VideoResult(vid, [], [p.to_dict() for p in problems + probs])

    if not ann_dir.is_dir():
        return fail_all("missing mask folder (a2d_annotation_with_instances/<video_id>)")
    frames = list_annotated_frames(ann_dir)
    if len(frames) < job.expected_annotated:
        problems.append(Problem(vid, f"missing mask files: videoset.csv lists {job.expected_annotated} annotated "
                                     f"frames, found {len(frames)} .h5 files"))
    annotations: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for frame in frames:
        try:
            annotations[frame] = read_frame_annotation(ann_dir / f"{frame:05d}.h5")
        except CorruptMaskFile as e:
            problems.append(Problem(vid, f"corrupt mask file: {e}", None, frame))
    if not annotations:
        return fail_all("no readable annotated frame")

    shorts = {iid: short for iid, _, short in job.expressions}
    groups = group_by_short(shorts)
    wanted_samples: list[tuple[int, str, str, int]] = []   # (instance, long, short, frame)
    for iid, long, short in job.expressions:
        # MTTR's rule: a sample wherever the frame's h5 lists the instance, even with an all-zero mask
        listed = [f for f, (ids, _) in sorted(annotations.items()) if iid in ids]
        if not listed:
            problems.append(Problem(vid, "instance listed in no annotated frame's h5 (MTTR skips it too)", iid))
        wanted_samples += [(iid, long, short, f) for f in listed]
    if not wanted_samples:
        return VideoResult(vid, [], [p.to_dict() for p in problems])

    used_frames = sorted({f for *_, f in wanted_samples})
    w = job.settings.window
    unclamped = {max(i, 0) for f in used_frames for i in range(f - 1 - w // 2, f - 1 + (w + 1) // 2)}
    try:
        # to the end: the decoded length is what windows clamp to (MTTR's len(read_video(...)))
        decoded, n_decoded, _ = decode_frames(Path(job.video_path), unclamped, to_end=True,
                                              decoder=job.settings.decoder)
    except VideoUnreadable as e:
        return fail_all(f"unreadable video: {e}")
    if n_decoded != job.listed_frames:
        problems.append(Problem(vid, f"frame count mismatch: videoset.csv total_frames {job.listed_frames}, "
                                     f"decoded {n_decoded} (kept; windows clamp to the decoded end)",
                                details={"total_frames_listed": job.listed_frames, "frames_decoded": n_decoded}))

    # every unclamped index below n_decoded was decoded; beyond the real end, windows clamp to it
    # (MTTR clamps also when the annotated frame itself lies past the end: the window shows the last frame)
    windows = {f: window_indices(f, n_decoded, w) for f in used_frames}
    stored = sorted({i for win in windows.values() for i in win})
    first = decoded[stored[0]]
    size = target_size(first.shape[0], first.shape[1], job.settings.short_side, job.settings.max_long_side)
    records: list[dict] = []
    counts = {"samples_empty_mask": 0, "samples_window_past_end": 0,
              "videos_frame_count_mismatch": int(n_decoded != job.listed_frames)}
    tmp = Path(job.shard_path).with_name(f".{Path(job.shard_path).name}.tmp-{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as f:
        encoded = f.create_dataset("frames", (len(stored),), dtype=h5py.vlen_dtype(np.uint8))
        for k, i in enumerate(stored):
            encoded[k] = encode_frame(resize_frame(decoded[i], size), job.settings.codec, job.settings.jpeg_quality)
        f.create_dataset("frame_numbers", data=np.asarray([i + 1 for i in stored], dtype=np.int32))
        for frame in used_frames:
            ids, masks = annotations[frame]
            masks = resize_masks(masks, size)
            present = [i for i in ids.tolist() if i in shorts]
            short_groups = sorted({tuple(groups[i]) for i in present})
            short_masks = np.stack([merge_masks(ids, masks, list(g)) for g in short_groups])
            g = f.create_group(f"annotated/{frame:05d}")
            g.create_dataset("instance_ids", data=ids)
            g.create_dataset("masks", data=masks.astype(np.uint8), compression="gzip", compression_opts=4,
                             chunks=(1, *size))
            g.create_dataset("short_masks", data=short_masks.astype(np.uint8), compression="gzip",
                             compression_opts=4, chunks=(1, *size))
            for iid, long, short, ff in wanted_samples:
                if ff != frame:
                    continue
                group = tuple(groups[iid])
                members_here = [m for m in group if m in ids.tolist()]
                record = SampleRecord(
                    sample_id=f"{vid}_{iid}_{frame:05d}", video_id=vid, instance_id=int(iid), frame=frame,
                    split=job.split, long=long, short=short, shard=f"shards/{vid}.h5",
                    window=[i + 1 for i in windows[frame]], referred_index=ids.tolist().index(iid),
                    short_index=short_groups.index(group), short_instance_ids=members_here,
                    size=list(size), orig_size=list(job.orig_size), video_frames=n_decoded)
                records.append(record.to_dict())
                counts["samples_empty_mask"] += not masks[record.referred_index].any()
                counts["samples_window_past_end"] += frame > n_decoded
        problem_dicts = [p.to_dict() for p in problems]
        f.attrs.update({"schema": PREPARED_SCHEMA, "version": PREPARED_VERSION, "video_id": vid,
                        "settings_hash": digest, "codec": job.settings.codec,
                        "decoder": job.settings.decoder, "records": json.dumps(records),
                        "problems": json.dumps(problem_dicts), "counts": json.dumps(counts)})
    os.replace(tmp, job.shard_path)  # the shard appears only when complete
    return VideoResult(vid, records, problem_dicts, counts)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_jobs(raw: A2DRaw, out: Path, shorts: dict[tuple[str, int], str],
               settings: PrepareSettings) -> tuple[list[VideoJob], list[Problem], dict[str, int]]:
    """Group expressions by video; skip missed videos; report rows that cannot become samples."""
    problems: list[Problem] = []
    per_video: dict[str, dict[int, tuple[int, str, str]]] = {}
    counts = {"videos_missed_skipped": 0, "expressions": 0}
    for e in raw.expressions:
        if e.video_id in raw.missed:
            continue
        if e.video_id not in raw.videos:
            problems.append(Problem(e.video_id, "video not listed in videoset.csv", e.instance_id))
            continue
        if not e.query:
            problems.append(Problem(e.video_id, "empty expression", e.instance_id))
            continue
        rows = per_video.setdefault(e.video_id, {})
        if e.instance_id in rows:
            problems.append(Problem(e.video_id, "duplicate expression row for this instance (kept the first)",
                                    e.instance_id))
            continue
        rows[e.instance_id] = (e.instance_id, e.query, shorts[(e.video_id, e.instance_id)])
        counts["expressions"] += 1
    counts["videos_missed_skipped"] = len(raw.missed & set(raw.videos))
    jobs = []
    for vid in sorted(per_video):
        info = raw.videos[vid]
        jobs.append(VideoJob(vid, info.split, str(raw.video_path(vid)), str(raw.annotation_dir(vid)),
                             (info.height, info.width), info.annotated_frames, info.total_frames,
                             tuple(per_video[vid][i] for i in sorted(per_video[vid])), settings,
                             str(out / "shards" / f"{vid}.h5")))
    return jobs, problems, counts


def extract_shorts(raw: A2DRaw, short_source: str, tagger: str, rule: str) -> tuple[dict[tuple[str, int], str], dict]:
    """Short expression of every row: the manual `short_query`, or the tagger's."""
    if short_source not in SHORT_SOURCES:
        raise ValueError(f"short text source must be one of {SHORT_SOURCES}")
    rows = [e for e in raw.expressions if e.query]
    info: dict = {"source": short_source, "tagger": None, "rule": None, "fallback_to_long": 0}
    if short_source == "manual":
        if not raw.has_short_query:
            raise DatasetRootError("manual short text asked for, but a2d_annotation.txt has no short_query column;"
                                   " use --short-text machine")
        shorts = [e.short_query or "" for e in rows]
    else:
        from pipeline.shorten import Shortener, spacy_model_name
        shortener = Shortener(tagger=tagger, rule=rule)
        shorts = shortener.shorten_many([e.query for e in rows])
        info.update(tagger=tagger, rule=rule, model=spacy_model_name() if tagger == "spacy" else "nltk")
    result = {}
    for e, s in zip(rows, shorts):
        if not s.strip():  # e.g. an expression that starts with its verb: the whole text is the subject
            s = e.query
            info["fallback_to_long"] += 1
        result[(e.video_id, e.instance_id)] = s.strip()
    return result, info


def prepare_a2d(root: Path, out: Path, *, short_source: str = "machine", tagger: str = "spacy",
                rule: str = "subject", settings: PrepareSettings = PrepareSettings(), workers: int | None = None,
                progress: bool = True) -> dict:
    """Prepare an A2D-Sentences root into `out`; returns the manifest (with counts)."""
    root, out = Path(root), Path(out)
    if settings.decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {settings.decoder!r}")
    raw = read_a2d(root)
    if not raw.videos:
        raise DatasetRootError(f"{root}: videoset.csv lists no video")
    shorts, short_info = extract_shorts(raw, short_source, tagger, rule)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for stale in (out / "shards").glob(".*.tmp-*"):
        stale.unlink()  # leftovers of a killed run
    jobs, problems, counts = build_jobs(raw, out, shorts, settings)
    problems = list(raw.problems) + problems
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    results: list[VideoResult] = []
    bar = tqdm(total=len(jobs), desc="prepare-data", unit="video", disable=not progress)
    if workers == 1:
        _worker_init()
        for job in jobs:
            results.append(prepare_video(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            futures = [pool.submit(prepare_video, job) for job in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    bar.close()

    results.sort(key=lambda r: r.video_id)
    records = sorted((r for res in results for r in res.records), key=lambda r: r["sample_id"])
    problem_dicts = [p.to_dict() for p in problems] + [p for res in results for p in res.problems]
    if not records:
        raise DatasetRootError(f"nothing could be prepared from {root}: {len(problem_dicts)} problems, "
                               f"first: {problem_dicts[0]['reason'] if problem_dicts else 'no expressions'}")
    _atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _atomic_write_text(out / "report.json", json.dumps({"problems": problem_dicts}, indent=1))
    shards = [{"video_id": r.video_id, "file": f"shards/{r.video_id}.h5", "samples": len(r.records)}
              for r in results if r.records]
    counts.update({
        "videos": len(shards), "samples": len(records),
        "samples_train": sum(r["split"] == "train" for r in records),
        "samples_test": sum(r["split"] == "test" for r in records),
        "annotated_frames": len({(r["video_id"], r["frame"]) for r in records}),
        "merged_short_masks": sum(len(r["short_instance_ids"]) > 1 for r in records),
        "short_fallback_to_long": short_info.pop("fallback_to_long"),
        "broken": len(problem_dicts), "videos_resumed": sum(r.resumed for r in results),
    })
    for key in ("samples_empty_mask", "samples_window_past_end", "videos_frame_count_mismatch"):
        counts[key] = sum(r.counts.get(key, 0) for r in results)
    manifest = {
        "schema": PREPARED_SCHEMA, "version": PREPARED_VERSION, "dataset": "a2d", "source": str(root.resolve()),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "short_text": short_info, "window": settings.window,
        "resolution": {"short_side": settings.short_side, "max_long_side": settings.max_long_side},
        "codec": {"format": settings.codec, "quality": settings.jpeg_quality}, "decoder": settings.decoder,
        "settings_hash": hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:16],
        "counts": counts, "shards": shards, "records_file": "samples.jsonl", "report_file": "report.json",
    }
    _atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
