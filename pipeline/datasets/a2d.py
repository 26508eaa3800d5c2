"""Reader of the A2D-Sentences raw layout (SPEC.md); `losh synth` writes the same layout.

Samples follow MTTR: a window of 8 frames around each annotated frame; train/test from videoset.csv.

ROOT/Release/clips320H/<vid>.mp4, ROOT/Release/videoset.csv (no header, 9 columns),
ROOT/text_annotations/a2d_annotation.txt (video_id,instance_id,query[,short_query]),
ROOT/text_annotations/a2d_missed_videos.txt,
ROOT/text_annotations/a2d_annotation_with_instances/<vid>/<frame:05d>.h5 (1-based frames).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from losh.pipeline.datasets.base import (
    DatasetPlan,
    DatasetRootError,
    ExpressionSpec,
    Problem,
    VideoSpec,
    decoded_lines,
    id_problem,
)

SPLITS = {0: "train", 1: "test"}


class CorruptMaskFile(RuntimeError):
    """An annotation .h5 exists but cannot be read or has inconsistent contents."""


@dataclass(frozen=True)
class VideoInfo:
    video_id: str
    label: int
    height: int
    width: int
    total_frames: int
    annotated_frames: int
    split: str


@dataclass(frozen=True)
class Expression:
    video_id: str
    instance_id: int
    query: str
    short_query: str | None


@dataclass
class A2DRaw:
    root: Path
    videos: dict[str, VideoInfo]
    expressions: list[Expression]
    missed: set[str]
    problems: list[Problem] = field(default_factory=list)
    has_short_query: bool = False

    def video_path(self, video_id: str) -> Path:
        return self.root / "Release" / "clips320H" / f"{video_id}.mp4"

    def annotation_dir(self, video_id: str) -> Path:
        return self.root / "text_annotations" / "a2d_annotation_with_instances" / video_id


def _required(root: Path) -> dict[str, Path]:
    return {
        "videoset": root / "Release" / "videoset.csv",
        "annotations": root / "text_annotations" / "a2d_annotation.txt",
        "clips": root / "Release" / "clips320H",
        "masks": root / "text_annotations" / "a2d_annotation_with_instances",
    }


def read_videoset(path: Path, problems: list[Problem] | None = None) -> dict[str, VideoInfo]:
    videos: dict[str, VideoInfo] = {}
    lines = decoded_lines(path, problems if problems is not None else [])
    for line_no, row in ((number, row) for number, text in lines for row in csv.reader([text])):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 9:
            raise DatasetRootError(f"{path}:{line_no}: expected 9 columns, found {len(row)}")
        vid, label, _start, _end, height, width, total, annotated, subset = (c.strip() for c in row)
        try:
            videos[vid] = VideoInfo(vid, int(label), int(height), int(width), int(total), int(annotated),
                                    SPLITS[int(subset)])
        except (ValueError, KeyError) as e:
            raise DatasetRootError(f"{path}:{line_no}: malformed row {row!r} ({e})") from e
    return videos


def read_expressions(path: Path) -> tuple[list[Expression], list[Problem], bool]:
    """Rows of a2d_annotation.txt; malformed rows (e.g. instance_id '1 (copy)') become problems."""
    expressions: list[Expression] = []
    problems: list[Problem] = []
    lines = decoded_lines(path, problems)
    reader = csv.DictReader(text for _, text in lines)
    columns = set(reader.fieldnames or [])
    if not {"video_id", "instance_id", "query"} <= columns:
        raise DatasetRootError(f"{path}: header must hold video_id,instance_id,query; found {reader.fieldnames}")
    has_short = "short_query" in columns
    for row in reader:
        vid = (row["video_id"] or "").strip()
        raw_id = (row["instance_id"] or "").strip()
        problem = id_problem(vid, "video id in a2d_annotation.txt", instance_id=raw_id)
        if problem is not None:
            problems.append(problem)
            continue
        try:
            instance_id = int(raw_id)
        except ValueError:
            problems.append(Problem(vid, f"malformed instance id {raw_id!r} in a2d_annotation.txt", raw_id))
            continue
        short = row.get("short_query") if has_short else None
        expressions.append(Expression(vid, instance_id, (row["query"] or "").strip(),
                                      short.strip() if short is not None else None))
    return expressions, problems, has_short


def read_a2d(root: Path) -> A2DRaw:
    """Read the index files of an A2D-Sentences root; raise DatasetRootError if it is unusable."""
    root = Path(root)
    paths = _required(root)
    missing = [str(p.relative_to(root)) for p in paths.values() if not p.exists()]
    if missing:
        raise DatasetRootError(f"{root} is not an A2D-Sentences root: missing {', '.join(missing)}")
    videoset_problems: list[Problem] = []
    videos = read_videoset(paths["videoset"], videoset_problems)
    expressions, problems, has_short = read_expressions(paths["annotations"])
    problems = videoset_problems + problems
    missed_path = root / "text_annotations" / "a2d_missed_videos.txt"
    missed = set(missed_path.read_text().split()) if missed_path.exists() else set()
    return A2DRaw(root, videos, expressions, missed, problems, has_short)


def list_annotated_frames(annotation_dir: Path) -> list[int]:
    """1-based frame numbers that have an annotation .h5 file."""
    frames = []
    for p in annotation_dir.glob("*.h5"):
        if p.stem.isdigit():
            frames.append(int(p.stem))
    return sorted(frames)


def read_frame_annotation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(instance_ids (N,), masks (N, H, W) bool) of one annotated frame.

    A2D stores masks transposed, (N, W, H), or (W, H) when the frame holds one instance.
    """
    try:
        with h5py.File(path, "r") as f:
            ids = np.asarray(f["instance"][()]).reshape(-1).astype(np.int64)
            masks = np.asarray(f["reMask"][()])
    except (OSError, KeyError) as e:
        raise CorruptMaskFile(f"unreadable mask file {path.name}: {e}") from e
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] != len(ids):
        raise CorruptMaskFile(f"mask file {path.name}: {len(ids)} instances but reMask shape {masks.shape}")
    return ids, masks.transpose(0, 2, 1) > 0


def plan_a2d(root: Path) -> DatasetPlan:
    """The videos to prepare: expressions grouped by video; missed videos skipped; rows that cannot become
    samples (unknown video, empty text, duplicate instance) reported."""
    raw = read_a2d(root)
    if not raw.videos:
        raise DatasetRootError(f"{root}: videoset.csv lists no video")
    problems: list[Problem] = list(raw.problems)
    per_video: dict[str, dict[int, Expression]] = {}
    counts = {"videos_missed_skipped": len(raw.missed & set(raw.videos)), "expressions": 0}
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
        rows[e.instance_id] = e
        counts["expressions"] += 1
    videos = []
    for vid in sorted(per_video):
        info = raw.videos[vid]
        expressions = tuple(ExpressionSpec(str(i), i, e.query, e.short_query if raw.has_short_query else None)
                            for i, e in sorted(per_video[vid].items()))
        videos.append(VideoSpec(vid, info.split, "annotated_frames", expressions, video_file=str(raw.video_path(vid)),
                                annotation_format="a2d_h5", annotation_dir=str(raw.annotation_dir(vid)),
                                orig_size=(info.height, info.width), expected_annotated=info.annotated_frames,
                                listed_frames=info.total_frames))
    return DatasetPlan("a2d", videos, problems, counts,
                       splits={"train": {"kind": "window", "masks": True}, "test": {"kind": "window", "masks": True}},
                       eval_split="test", has_manual_short=raw.has_short_query)
