"""The one interface between a data set's raw layout and `losh prepare-data`.

A reader (one file per data set in this folder) turns its raw root into a `DatasetPlan`: the videos
to prepare, each as a `VideoSpec` (where its frames and masks are, its expressions, how its samples
are drawn), the problems it found, its splits and the split evaluated by default. `pipeline/prepare.py`
does the rest the same way for every data set (short texts, decoding, resizing, shards, records).

Sampling (how a video's records are drawn, `VideoSpec.sampling`):
  "annotated_frames"  MTTR's A2D/JHMDB rule: one "window" sample per expression and annotated frame
                      listing the instance, the window of w frames around that frame (clamped to the video)
  "consecutive"       MTTR's Refer-YouTube-VOS training rule: the video cut into consecutive windows of
                      w frames (the last one moved back to end at the last frame, or the last frame
                      repeated when the video is shorter than w), one "window" sample per expression and
                      window, every annotated frame of the window supervised
  "whole_video"       one "video" sample per expression over the whole video (whole-video inference),
                      scored on its annotated frames (none where the masks are private)
  "image"             a still image (RefCOCO/+/g): a one-frame video, one "window" sample of that frame per
                      expression; training makes a clip of the model's window from it (losh/data/still_images.py)

Annotation formats (where a video's masks come from, `VideoSpec.annotation_format`):
  "a2d_h5"       A2D-Sentences' per-frame .h5 files in `annotation_dir`
  "palette_png"  one palette PNG per frame (`annotation_files`), pixel value = object id
  "jhmdb_mat"    JHMDB's puppet_mask.mat (`annotation_files[0]`), the frames of `annotated`
  "coco"         one object of a still image: its COCO segmentation (`coco_segmentation`, polygons or RLE as
                 JSON) decoded at `orig_size` as pycocotools' annToMask does; the object is instance 1
  "none"         no masks (private)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from losh.schemas.safe_paths import unsafe_reason

SAMPLINGS = ("annotated_frames", "consecutive", "whole_video", "image")
ANNOTATION_FORMATS = ("a2d_h5", "palette_png", "jhmdb_mat", "coco", "none")


class DatasetRootError(RuntimeError):
    """The raw root cannot be used at all (missing index files, unreadable index)."""


def id_problem(video_id: str, what: str = "video id", **where) -> "Problem | None":
    """A Problem when a data set's id cannot name a file inside its folder (`../x`, `/x`, `a/b`): such ids are
    reported and skipped, never joined to a path."""
    reason = unsafe_reason(video_id)
    if reason is None:
        return None
    return Problem(str(video_id), f"{what} {video_id!r} is not a plain file or folder name ({reason}): skipped",
                   **where)


def decoded_lines(path: Path, problems: list["Problem"], encoding: str = "utf-8") -> list[tuple[int, str]]:
    """(line number, text) of a text file; a line that is not valid `encoding` becomes a problem naming the file
    and the line, and the others are read (one bad byte does not end the data set)."""
    lines = []
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        try:
            lines.append((number, raw.decode(encoding)))
        except UnicodeDecodeError as error:
            problems.append(Problem("", f"{Path(path).name} line {number}: not {encoding} text "
                                        f"(byte 0x{raw[error.start]:02x} at column {error.start + 1}): skipped",
                                    frame=number))
    return lines


@dataclass(frozen=True)
class Problem:
    """One broken piece of input, reported by id and reason; the rest is processed."""

    video_id: str
    reason: str
    instance_id: int | str | None = None
    frame: int | str | None = None
    details: dict | None = None   # the numbers behind the reason, for programs reading report.json

    def to_dict(self) -> dict:
        d = {"video_id": self.video_id, "instance_id": self.instance_id, "frame": self.frame, "reason": self.reason}
        if self.details:
            d.update(self.details)
        return d


@dataclass(frozen=True)
class ExpressionSpec:
    expression_id: str
    instance_id: int               # the referred object's id in the masks; -1 where masks are private
    long: str
    manual_short: str | None = None   # a human short expression, where the data set has one
    subset: str = ""               # e.g. Refer-DAVIS17's expression set


@dataclass(frozen=True)
class VideoSpec:
    video_id: str
    split: str
    sampling: str
    expressions: tuple[ExpressionSpec, ...]
    video_file: str = ""                     # a video file to decode (A2D) ...
    frame_files: tuple[str, ...] = ()        # ... or the video's frames as image files, in time order
    frame_names: tuple[str, ...] = ()        # the data set's frame names (default: 00001, 00002, ...)
    annotation_format: str = "none"
    annotation_dir: str = ""                 # a2d_h5: the folder of <frame:05d>.h5 files
    annotation_files: tuple[str, ...] = ()   # palette_png: one file per frame, "" where it has none
    object_ids: tuple[int, ...] = ()         # palette_png: the video's objects (pixel value = id)
    annotated: tuple[int, ...] = ()          # jhmdb_mat: the frames of the protocol (1-based)
    coco_segmentation: str = ""              # coco: the object's COCO segmentation, as JSON text
    orig_size: tuple[int, int] | None = None  # (H, W) when the index lists it (else read from the frames)
    expected_annotated: int = -1             # annotated frames the index lists (checked when >= 0)
    listed_frames: int = -1                  # frames the index lists (checked when >= 0)


@dataclass
class DatasetPlan:
    dataset: str
    videos: list[VideoSpec]
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    splits: dict[str, dict] = field(default_factory=dict)     # split -> {"kind": window/video/image, "masks": bool}
    eval_split: str = "test"
    info: dict = field(default_factory=dict)                  # data-set facts for the manifest
    has_manual_short: bool = False
    files: dict[str, object] = field(default_factory=dict)    # JSON files written into PREP (e.g. a protocol)
