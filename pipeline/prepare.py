"""`losh prepare-data`: a raw data set -> PREP (manifest, sample records, per-video HDF5 shards).

The data set's reader (pipeline/datasets/) says which videos, frames, masks and expressions there are
and how samples are drawn; everything after that is the same for every data set.

One job per video, run in parallel processes; each job writes its own shard atomically and stores
its sample records and problems in the shard's attributes, so a re-run skips finished videos and
the assembled result does not depend on the number of workers.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import h5py
import numpy as np
from PIL import Image

from losh.pipeline.coco_masks import decode_segmentation
from losh.pipeline.datasets import DATASETS, STILL_IMAGE_DATASETS, plan_dataset
from losh.pipeline.datasets.a2d import CorruptMaskFile, list_annotated_frames, read_frame_annotation
from losh.pipeline.datasets.base import DatasetPlan, DatasetRootError, Problem, VideoSpec
from losh.pipeline.masks import group_by_short, merge_masks
from losh.pipeline.prepared_folder import (
    recorded_reader_options,
    remove_prepared_set,
    replaces_existing_set,
    requested_settings,
)
from losh.pipeline.short_fallback import usable_short
from losh.pipeline.video import (
    DECODERS,
    VideoUnreadable,
    decode_frames,
    resize_frame,
    resize_masks,
    target_size,
    window_indices,
)
from losh.schemas.atomic import atomic_path, atomic_write_text
from losh.schemas.flows import FLOWS_DIR
from losh.schemas.frame_codec import encode_frame
from losh.schemas.locks import folder_lock, refuse_if_locked
from losh.schemas.prepared import PREPARED_SCHEMA, PREPARED_VERSION, SampleRecord
from losh.schemas.progress import progress_bar
from losh.schemas.safe_paths import join_ids, unsafe_reason

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
    spec: VideoSpec
    shorts: tuple[str, ...]       # the short text of each of spec.expressions
    settings: PrepareSettings
    shard_path: str

    @property
    def video_id(self) -> str:
        return self.spec.video_id

    def settings_hash(self) -> str:
        """What the shard depends on (not where the raw files lie: a moved root resumes)."""
        spec = self.spec
        key = {"version": PREPARED_VERSION, "split": spec.split, "sampling": spec.sampling,
               "expressions": [asdict(e) for e in spec.expressions], "shorts": self.shorts,
               "frames": len(spec.frame_files), "frame_names": spec.frame_names, "objects": spec.object_ids, "annotated": spec.annotated,
               "annotations": spec.annotation_format, "settings": asdict(self.settings)}
        if spec.coco_segmentation:   # a still image's object: its mask and the size it is decoded at
            key.update(segmentation=spec.coco_segmentation, orig_size=list(spec.orig_size or ()))
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


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
    _die_with_parent()


def _die_with_parent() -> None:
    """A pool worker ends when the process that started it dies (a killed prepare-data leaves none behind)."""
    if sys.platform.startswith("linux") and multiprocessing.parent_process() is not None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


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


Annotations = dict[int, tuple[np.ndarray, np.ndarray]]   # frame number -> (instance ids (N,), masks (N, H, W))


def read_a2d_annotations(spec: VideoSpec, problems: list[Problem]) -> Annotations | None:
    """The video's A2D .h5 masks (None: no mask folder at all)."""
    folder = Path(spec.annotation_dir)
    if not folder.is_dir():
        return None
    frames = list_annotated_frames(folder)
    if len(frames) < spec.expected_annotated:
        problems.append(Problem(spec.video_id, f"missing mask files: videoset.csv lists {spec.expected_annotated} "
                                               f"annotated frames, found {len(frames)} .h5 files"))
    annotations: Annotations = {}
    for frame in frames:
        try:
            annotations[frame] = read_frame_annotation(folder / f"{frame:05d}.h5")
        except CorruptMaskFile as e:
            problems.append(Problem(spec.video_id, f"corrupt mask file: {e}", None, frame))
    return annotations


def read_palette_annotations(spec: VideoSpec, problems: list[Problem]) -> tuple[Annotations, dict[int, np.ndarray]]:
    """Palette PNGs (pixel value = object id, 0 background, 255 void) -> masks of the video's objects (its
    listed ones, those found in the masks, and every referred one) in every frame that has a PNG, and the
    label maps themselves (frame number -> (H, W) uint8)."""
    labels: dict[int, np.ndarray] = {}
    for number, path in enumerate(spec.annotation_files, start=1):
        if not path:
            continue
        try:
            with Image.open(path) as image:
                if image.mode not in ("P", "L"):
                    raise ValueError(f"mode {image.mode}, not a palette PNG of object ids")
                labels[number] = np.asarray(image)
        except (OSError, ValueError) as e:
            problems.append(Problem(spec.video_id, f"unreadable mask {Path(path).name}: {e}", None, number))
    found = {int(v) for arr in labels.values() for v in np.unique(arr)} - {0, 255}
    ids = np.asarray(sorted(set(spec.object_ids) | found | {e.instance_id for e in spec.expressions
                                                            if e.instance_id >= 0}), dtype=np.int64)
    return {n: (ids, arr[None] == ids[:, None, None]) for n, arr in labels.items()}, labels


def read_jhmdb_annotations(spec: VideoSpec) -> Annotations:
    """The protocol frames' puppet masks (one instance, id 1) from puppet_mask.mat (H x W x T, frame i at i-1)."""
    from scipy.io import loadmat

    masks = loadmat(spec.annotation_files[0])["part_mask"]
    if masks.ndim == 2:
        masks = masks[:, :, None]
    ids = np.asarray([1], dtype=np.int64)
    return {f: (ids, masks[None, :, :, f - 1] > 0) for f in spec.annotated if f <= masks.shape[2]}


def read_coco_annotation(spec: VideoSpec) -> Annotations:
    """A still image's referred object (instance 1) from its COCO segmentation, decoded at the image size the
    annotations file gives (`orig_size`), as pycocotools' annToMask does."""
    height, width = spec.orig_size
    mask = decode_segmentation(json.loads(spec.coco_segmentation), height, width)
    return {1: (np.asarray([1], dtype=np.int64), mask[None])}


def read_image_frames(spec: VideoSpec, wanted: set[int]) -> dict[int, np.ndarray]:
    """BGR frames at the wanted 0-based indices from the video's image files."""
    frames = {}
    for i in sorted(wanted):
        frame = cv2.imread(spec.frame_files[i], cv2.IMREAD_COLOR)
        if frame is None:
            raise VideoUnreadable(f"missing or unreadable frame {spec.frame_files[i]}")
        frames[i] = frame
    return frames


def consecutive_windows(num_frames: int, window: int) -> list[list[int]]:
    """MTTR's Refer-YouTube-VOS training windows (0-based): consecutive windows of `window` frames; the last
    one moved back to end at the last frame, or, in a video shorter than `window`, padded with its last frame."""
    windows = [list(range(i, min(i + window, num_frames))) for i in range(0, num_frames, window)]
    if len(windows[-1]) < window:
        if num_frames >= window:
            windows[-1] = list(range(num_frames - window, num_frames))
        else:
            windows[-1] = windows[-1] + [num_frames - 1] * (window - len(windows[-1]))
    return windows


def image_video_plans(spec: VideoSpec, annotations: Annotations, n_frames: int, window: int,
                      problems: list[Problem]) -> list[tuple[int, list[int], int, list[int], list[int]]]:
    """The samples of a video given as frames: (expression index, window (0-based), anchor frame, target
    positions, target frames), for each sampling (base.py)."""
    plans = []
    for k, e in enumerate(spec.expressions):
        if spec.sampling == "image":              # a still image: the one frame, its one object
            plans.append((k, [0], 1, [0], [1]))
            continue
        if spec.sampling == "annotated_frames":   # JHMDB: MTTR's window around each annotated frame
            plans += [(k, window_indices(f, n_frames, window), f, [window // 2], [f])
                      for f, (ids, _) in sorted(annotations.items()) if e.instance_id in ids]
            continue
        if spec.sampling == "whole_video":
            frames = list(range(n_frames))
            targets = [p for p in frames if p + 1 in annotations] if e.instance_id >= 0 else []
            plans.append((k, frames, 1, targets, [p + 1 for p in targets]))
            continue
        for frames in consecutive_windows(n_frames, window):
            missing = sorted({i + 1 for i in frames if i + 1 not in annotations})
            if missing:
                # every frame of a training window is supervised (and a batch shares its positions)
                if k == 0:
                    problems.append(Problem(spec.video_id, f"window of frames {frames[0] + 1}-{frames[-1] + 1} "
                                                           f"skipped: no mask for frame(s) {missing}", None,
                                            missing[0]))
                continue
            plans.append((k, frames, frames[window // 2] + 1, list(range(len(frames))), [i + 1 for i in frames]))
    return plans


def prepare_video(job: VideoJob) -> VideoResult:
    """Prepare one video: read its masks, decode and resize the frames its samples need, write its shard."""
    digest = job.settings_hash()
    done = _existing_result(job, digest)
    if done is not None:
        return done
    spec, settings = job.spec, job.settings
    problems: list[Problem] = []
    vid = spec.video_id

    def fail_all(reason: str) -> VideoResult:
        probs = [Problem(vid, reason, e.instance_id) for e in spec.expressions]
        return VideoResult(vid, [], [p.to_dict() for p in problems + probs])

    if spec.annotation_format == "a2d_h5":
        annotations = read_a2d_annotations(spec, problems)
        if annotations is None:
            return fail_all("missing mask folder (a2d_annotation_with_instances/<video_id>)")
        if not annotations:
            return fail_all("no readable annotated frame")
    labels: dict[int, np.ndarray] = {}
    if spec.annotation_format == "palette_png":
        annotations, labels = read_palette_annotations(spec, problems)
    elif spec.annotation_format == "jhmdb_mat":
        try:
            annotations = read_jhmdb_annotations(spec)
        except (OSError, ValueError, NotImplementedError) as e:
            return fail_all(f"unreadable puppet_mask.mat: {e}")
    elif spec.annotation_format == "coco":
        try:
            annotations = read_coco_annotation(spec)
        except Exception as e:   # noqa: BLE001 - pycocotools raises several kinds on a damaged segmentation
            return fail_all(f"undecodable COCO segmentation: {e}")
    elif spec.annotation_format != "a2d_h5":
        annotations = {}
    if spec.sampling != "whole_video" and not annotations:
        return fail_all("no readable annotated frame")

    groups = group_by_short([(e.instance_id, short) for e, short in zip(spec.expressions, job.shorts)])
    w = settings.window
    # (expression index, window of 0-based indices (None: the whole video), anchor frame, target positions)
    if spec.video_file:
        if spec.sampling != "annotated_frames":
            raise ValueError(f"{vid}: a video file is read with the annotated_frames sampling only")
        wanted: list[tuple[int, int]] = []   # (expression index, annotated frame)
        for k, e in enumerate(spec.expressions):
            # MTTR's rule: a sample wherever the frame's h5 lists the instance, even with an all-zero mask
            listed = [f for f, (ids, _) in sorted(annotations.items()) if e.instance_id in ids]
            if not listed:
                problems.append(Problem(vid, "instance listed in no annotated frame's h5 (MTTR skips it too)",
                                        e.instance_id))
            wanted += [(k, f) for f in listed]
        if not wanted:
            return VideoResult(vid, [], [p.to_dict() for p in problems])
        used_frames = sorted({f for _, f in wanted})
        unclamped = {max(i, 0) for f in used_frames for i in range(f - 1 - w // 2, f - 1 + (w + 1) // 2)}
        try:
            # to the end: the decoded length is what windows clamp to (MTTR's len(read_video(...)))
            decoded, n_frames, _ = decode_frames(Path(spec.video_file), unclamped, to_end=True,
                                                 decoder=settings.decoder)
        except VideoUnreadable as e:
            return fail_all(f"unreadable video: {e}")
        if spec.listed_frames >= 0 and n_frames != spec.listed_frames:
            problems.append(Problem(vid, f"frame count mismatch: videoset.csv total_frames {spec.listed_frames}, "
                                         f"decoded {n_frames} (kept; windows clamp to the decoded end)",
                                    details={"total_frames_listed": spec.listed_frames, "frames_decoded": n_frames}))
        # beyond the real end, windows clamp to it (MTTR clamps also when the annotated frame itself lies past
        # the end: the window shows the last frame)
        plans = [(k, window_indices(f, n_frames, w), f, [w // 2], [f]) for k, f in wanted]
    else:
        n_frames = len(spec.frame_files)
        if n_frames == 0:
            return fail_all("no frames")
        plans = image_video_plans(spec, annotations, n_frames, w, problems)
        try:
            decoded = read_image_frames(spec, {i for _, window, *_ in plans for i in window})
        except VideoUnreadable as e:
            return fail_all(f"unreadable frames: {e}")
        if spec.annotation_format == "coco" and decoded[0].shape[:2] != tuple(spec.orig_size):
            return fail_all(f"the image is {decoded[0].shape[0]}x{decoded[0].shape[1]}, its entry in the annotations "
                            f"file says {spec.orig_size[0]}x{spec.orig_size[1]} (the mask would not fit)")
    if not plans:
        return VideoResult(vid, [], [p.to_dict() for p in problems + [Problem(vid, "no sample (no annotated frame "
                                                                                   "of its expressions)")]])

    stored = sorted({i for _, window, *_ in plans for i in window})
    first = decoded[stored[0]]
    orig_size = tuple(spec.orig_size) if spec.orig_size else tuple(first.shape[:2])
    size = target_size(first.shape[0], first.shape[1], settings.short_side, settings.max_long_side)
    used_annotated = sorted({f for *_, frames in plans for f in frames})
    frame_names = list(spec.frame_names) or [f"{i:05d}" for i in range(1, n_frames + 1)]
    records: list[dict] = []
    counts = {"samples_empty_mask": 0, "samples_window_past_end": 0,
              "videos_frame_count_mismatch": int(spec.listed_frames >= 0 and n_frames != spec.listed_frames)}
    # the shard appears only when complete
    with atomic_path(job.shard_path) as tmp, h5py.File(tmp, "w") as f:
        encoded = f.create_dataset("frames", (len(stored),), dtype=h5py.vlen_dtype(np.uint8))
        for k, i in enumerate(stored):
            encoded[k] = encode_frame(resize_frame(decoded[i], size), settings.codec, settings.jpeg_quality)
        f.create_dataset("frame_numbers", data=np.asarray([i + 1 for i in stored], dtype=np.int32))
        distinct_groups = sorted({g for g in groups if g})
        frame_ids: dict[int, list[int]] = {}
        empty_at: dict[tuple[int, int], bool] = {}     # (instance, frame) -> its mask is empty
        for frame in used_annotated:
            ids, masks_orig = annotations[frame]
            masks = resize_masks(masks_orig, size)
            frame_ids[frame] = ids.tolist()
            short_masks = np.stack([merge_masks(ids, masks, list(g)) for g in distinct_groups])
            g = f.create_group(f"annotated/{frame:05d}")
            g.create_dataset("instance_ids", data=ids)
            g.create_dataset("masks", data=masks.astype(np.uint8), compression="gzip", compression_opts=4,
                             chunks=(1, *size))
            g.create_dataset("short_masks", data=short_masks.astype(np.uint8), compression="gzip",
                             compression_opts=4, chunks=(1, *size))
            for index, iid in enumerate(frame_ids[frame]):
                empty_at[(iid, frame)] = not masks[index].any()
            if spec.sampling != "whole_video" and tuple(size) != tuple(orig_size) and masks_orig.shape[1:] == orig_size:
                # scored at the original size (MTTR): the masks before resizing, for the evaluator
                g.create_dataset("original_masks", data=masks_orig.astype(np.uint8), compression="gzip",
                                 compression_opts=4, chunks=(1, *orig_size))
            if spec.sampling == "whole_video" and frame in labels:
                # whole videos are scored at the original size, on the data set's own label maps (DAVIS)
                g.create_dataset("labels", data=labels[frame], compression="gzip", compression_opts=4)
        for k, window, anchor, targets, target_frames in plans:
            e = spec.expressions[k]
            kind = "video" if spec.sampling == "whole_video" else "window"
            if spec.sampling == "annotated_frames":
                sample_id = f"{vid}_{e.instance_id}_{anchor:05d}"
            elif spec.sampling == "image":
                sample_id = f"{vid}_{e.expression_id}"
            elif kind == "window":
                sample_id = f"{vid}_{e.expression_id}_{anchor:05d}"
            else:
                sample_id = f"{vid}_{e.expression_id}"
            ids_here = frame_ids[target_frames[0]] if target_frames else []
            record = SampleRecord(
                sample_id=sample_id, video_id=vid, expression_id=e.expression_id, subset=e.subset,
                instance_id=e.instance_id, frame=anchor, split=spec.split, kind=kind, long=e.long,
                short=job.shorts[k], shard=f"shards/{vid}.h5", window=[i + 1 for i in window], targets=targets,
                target_frames=target_frames,
                referred_index=ids_here.index(e.instance_id) if target_frames else 0,
                short_index=distinct_groups.index(groups[k]) if target_frames else 0,
                short_instance_ids=[m for m in groups[k] if m in ids_here] if target_frames else [],
                size=list(size), orig_size=list(orig_size), video_frames=n_frames)
            records.append(record.to_dict())
            if target_frames:
                counts["samples_empty_mask"] += all(empty_at[(e.instance_id, t)] for t in target_frames)
            counts["samples_window_past_end"] += kind == "window" and anchor > n_frames
        problem_dicts = [p.to_dict() for p in problems]
        f.attrs.update({"schema": PREPARED_SCHEMA, "version": PREPARED_VERSION, "video_id": vid,
                        "settings_hash": digest, "codec": settings.codec,
                        "decoder": settings.decoder if spec.video_file else "images",
                        "records": json.dumps(records), "problems": json.dumps(problem_dicts),
                        "counts": json.dumps(counts), "frame_names": json.dumps(frame_names)})
    return VideoResult(vid, records, problem_dicts, counts)


def extract_shorts(plan: DatasetPlan, short_source: str, tagger: str, rule: str
                   ) -> tuple[dict[str, tuple[str, ...]], dict]:
    """The short text of every expression, per video: the data set's manual short text, or the tagger's."""
    if short_source not in SHORT_SOURCES:
        raise ValueError(f"short text source must be one of {SHORT_SOURCES}")
    expressions = [e for v in plan.videos for e in v.expressions]
    info: dict = {"source": short_source, "tagger": None, "rule": None, "fallback_to_long": 0}
    if short_source == "manual":
        if not plan.has_manual_short:
            raise DatasetRootError(f"manual short text asked for, but this {plan.dataset} root has none (A2D: a "
                                   "short_query column in a2d_annotation.txt); use --short-text machine")
        shorts = [e.manual_short or "" for e in expressions]
    else:
        from losh.pipeline.shorten import Shortener, spacy_model_name
        shortener = Shortener(tagger=tagger, rule=rule)
        shorts = shortener.shorten_many([e.long for e in expressions])
        info.update(tagger=tagger, rule=rule, model=spacy_model_name() if tagger == "spacy" else "nltk")
    result: dict[str, tuple[str, ...]] = {}
    position = 0
    for video in plan.videos:
        texts = []
        for e in video.expressions:
            given = shorts[position].strip()
            position += 1
            # e.g. an expression that starts with its verb, or a short text naming nothing ("on the left" -> "on"):
            # the whole text is the subject (pipeline/short_fallback.py)
            short = usable_short(e.long, given)
            info["fallback_to_long"] += short != given
            texts.append(short)
        result[video.video_id] = tuple(texts)
    return result, info


def settings_hash(settings: PrepareSettings) -> str:
    """The manifest's `settings_hash`: what the stored frames depend on (flows/index.json records it)."""
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:16]


def settings_for(dataset: str, **overrides) -> PrepareSettings:
    """The data set's default window and sizes (MTTR's recipe for it), with `overrides` (None: keep)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; one of {', '.join(DATASETS)}")
    values = {**DATASETS[dataset][1], **{k: v for k, v in overrides.items() if v is not None}}
    return PrepareSettings(**values)


def check_still_image_window(dataset: str, settings: PrepareSettings) -> None:
    """A still-image set (RefCOCO/+/g) is prepared one image a sample: its clips are made at training time."""
    if dataset in STILL_IMAGE_DATASETS and settings.window != 1:
        raise ValueError(f"{dataset} holds still images: a sample is its one image (window 1), and training makes a "
                         f"clip of the model's window from it; leave --window out (got {settings.window})")


def without_unsafe_ids(plan: DatasetPlan) -> DatasetPlan:
    """The plan without videos whose id cannot name a file inside the output folder, each reported (the readers
    report theirs already; this keeps any reader's slip from writing outside `--out`)."""
    unsafe = [v for v in plan.videos if unsafe_reason(v.video_id) is not None]
    if not unsafe:
        return plan
    problems = [Problem(v.video_id, f"video id {v.video_id!r} is not a plain file name "
                                    f"({unsafe_reason(v.video_id)}): skipped") for v in unsafe]
    return replace(plan, videos=[v for v in plan.videos if v not in unsafe], problems=[*plan.problems, *problems])


def prepare_dataset(dataset: str, root: Path, out: Path, *, short_source: str = "machine", tagger: str = "spacy",
                    rule: str = "subject", settings: PrepareSettings | None = None, workers: int | None = None,
                    progress: bool = True, overwrite: bool = False, **reader_options) -> dict:
    """`_prepare_dataset` holding `out`'s lock (one writer; refused at once while another writes `out`, or while
    `compute-flows` writes its flows).

    `out` may be missing, empty, a partial run of prepare-data or a set prepared with the same settings (all
    resumed). A set prepared with other settings raises PreparedSetDiffers naming them, unless `overwrite`: then it
    is replaced, its flows/ included. Any other non-empty folder raises FolderNotEmpty, also with `overwrite`."""
    out = Path(out)
    settings = settings or settings_for(dataset)
    check_still_image_window(dataset, settings)
    tagger_note = None
    if short_source == "machine":   # "auto": the rule's own tagger, or spaCy's where NLTK's data is missing
        from losh.pipeline.shorten import resolve_tagger
        tagger, tagger_note = resolve_tagger(tagger, rule)
    wanted = requested_settings(dataset, asdict(settings), short_source, tagger, rule, reader_options)
    replaces_existing_set(out, wanted, settings_hash(settings), overwrite)   # refused before OUT is touched
    with folder_lock(out, "losh prepare-data"):
        refuse_if_locked(out / FLOWS_DIR, "losh prepare-data")
        replace = replaces_existing_set(out, wanted, settings_hash(settings), overwrite)   # as it is now, locked
        return _prepare_dataset(dataset, root, out, short_source=short_source, tagger=tagger, rule=rule,
                                settings=settings, workers=workers, progress=progress, replace_existing=replace,
                                tagger_note=tagger_note, **reader_options)


def _prepare_dataset(dataset: str, root: Path, out: Path, *, short_source: str = "machine", tagger: str = "spacy",
                     rule: str = "subject", settings: PrepareSettings | None = None, workers: int | None = None,
                     progress: bool = True, replace_existing: bool = False, tagger_note: str | None = None,
                     **reader_options) -> dict:
    """Prepare a raw root of `dataset` into `out`; returns the manifest (with counts). `reader_options`
    go to the data set's reader (Refer-YouTube-VOS: holdout_videos, seed; Refer-DAVIS17: split).
    `replace_existing`: remove the prepared set in `out` (once the raw root has been read)."""
    root, out = Path(root), Path(out)
    settings = settings or settings_for(dataset)
    check_still_image_window(dataset, settings)
    if settings.decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {settings.decoder!r}")
    plan = plan_dataset(dataset, root, **reader_options)
    plan = without_unsafe_ids(plan)
    shorts, short_info = extract_shorts(plan, short_source, tagger, rule)
    if tagger_note:
        short_info["note"] = tagger_note
    if replace_existing:
        remove_prepared_set(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for stale in (out / "shards").glob(".*.tmp-*"):
        stale.unlink()  # leftovers of a killed run
    jobs = [VideoJob(v, shorts[v.video_id], settings, str(join_ids(out / "shards", f"{v.video_id}.h5")))
            for v in plan.videos]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    results: list[VideoResult] = []
    bar = progress_bar(total=len(jobs), desc="prepare-data", unit="video", disable=not progress)
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
    problem_dicts = [p.to_dict() for p in plan.problems] + [p for res in results for p in res.problems]
    if not records:
        raise DatasetRootError(f"nothing could be prepared from {root}: {len(problem_dicts)} problems, "
                               f"first: {problem_dicts[0]['reason'] if problem_dicts else 'no expressions'}")
    for name, content in plan.files.items():   # e.g. the JHMDB protocol this set used
        atomic_write_text(out / name, json.dumps(content, indent=1))
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    atomic_write_text(out / "report.json", json.dumps({"problems": problem_dicts}, indent=1))
    shards = [{"video_id": r.video_id, "file": f"shards/{r.video_id}.h5", "samples": len(r.records)}
              for r in results if r.records]
    counts = dict(plan.counts)
    counts.update({
        "videos": len(shards), "samples": len(records),
        **{f"samples_{split}": sum(r["split"] == split for r in records) for split in plan.splits},
        "annotated_frames": len({(r["video_id"], f) for r in records for f in r["target_frames"]}),
        "merged_short_masks": sum(len(r["short_instance_ids"]) > 1 for r in records),
        "short_fallback_to_long": short_info.pop("fallback_to_long"),
        "broken": len(problem_dicts), "videos_resumed": sum(r.resumed for r in results),
    })
    for key in ("samples_empty_mask", "samples_window_past_end", "videos_frame_count_mismatch"):
        counts[key] = sum(r.counts.get(key, 0) for r in results)
    splits = {name: {**info, "samples": counts[f"samples_{name}"]} for name, info in plan.splits.items()
              if counts[f"samples_{name}"]}
    eval_split = plan.eval_split if plan.eval_split in splits else next(iter(splits))
    manifest = {
        "schema": PREPARED_SCHEMA, "version": PREPARED_VERSION, "dataset": plan.dataset,
        "source": str(root.resolve()), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "short_text": short_info, "window": settings.window,
        "resolution": {"short_side": settings.short_side, "max_long_side": settings.max_long_side},
        "codec": {"format": settings.codec, "quality": settings.jpeg_quality}, "decoder": settings.decoder,
        "settings_hash": settings_hash(settings),
        "reader_options": recorded_reader_options(plan.dataset, reader_options),
        "counts": counts, "shards": shards, "records_file": "samples.jsonl", "report_file": "report.json",
        "splits": splits, "eval_split": eval_split, "dataset_info": plan.info,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def prepare_a2d(root: Path, out: Path, *, short_source: str = "machine", tagger: str = "spacy",
                rule: str = "subject", settings: PrepareSettings = PrepareSettings(), workers: int | None = None,
                progress: bool = True, overwrite: bool = False) -> dict:
    """Prepare an A2D-Sentences root into `out` (see prepare_dataset)."""
    return prepare_dataset("a2d", root, out, short_source=short_source, tagger=tagger, rule=rule, settings=settings,
                           workers=workers, progress=progress, overwrite=overwrite)
