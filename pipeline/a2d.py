"""Reader of the A2D-Sentences raw layout (SPEC.md); `losh synth` writes the same layout.

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

SPLITS = {0: "train", 1: "test"}


class DatasetRootError(RuntimeError):
    """The raw root cannot be used at all (missing index files, unreadable CSV)."""


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


@dataclass(frozen=True)
class Problem:
    """One broken piece of input, reported by id and reason; the rest is processed."""

    video_id: str
    reason: str
    instance_id: int | str | None = None
    frame: int | None = None
    details: dict | None = None   # the numbers behind the reason, for programs reading report.json

    def to_dict(self) -> dict:
        d = {"video_id": self.video_id, "instance_id": self.instance_id, "frame": self.frame, "reason": self.reason}
        if self.details:
            d.update(self.details)
        return d


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


def read_videoset(path: Path) -> dict[str, VideoInfo]:
    videos: dict[str, VideoInfo] = {}
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
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
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        if not {"video_id", "instance_id", "query"} <= columns:
            raise DatasetRootError(f"{path}: header must hold video_id,instance_id,query; found {reader.fieldnames}")
        has_short = "short_query" in columns
        for row in reader:
            vid = (row["video_id"] or "").strip()
            raw_id = (row["instance_id"] or "").strip()
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
    videos = read_videoset(paths["videoset"])
    expressions, problems, has_short = read_expressions(paths["annotations"])
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
