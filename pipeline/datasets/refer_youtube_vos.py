"""Reader of the Refer-YouTube-VOS raw layout, as the data set ships:

ROOT/{train,valid}/JPEGImages/<vid>/<frame>.jpg      every 5th frame of the source video (00000, 00005, ...)
ROOT/train/Annotations/<vid>/<frame>.png             palette PNGs, pixel value = object id
ROOT/train/meta.json                                 {"videos": {vid: {"objects": {oid: {"category", "frames"}}}}}
ROOT/meta_expressions/{train,valid,test}/meta_expressions.json
    {"videos": {vid: {"expressions": {"0": {"exp": ..., "obj_id": "1"}, ...}, "frames": [...]}}}
    (valid and test have no obj_id: their masks are private)

The competition's valid split is the videos of the valid file minus those of the test file. A root that
holds only some splits (train alone, as people often unpack it) is read for what it holds.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from losh.pipeline.datasets.base import DatasetPlan, DatasetRootError, ExpressionSpec, VideoSpec
from losh.pipeline.datasets.base import Problem as PlanProblem
from losh.schemas.safe_paths import unsafe_reason

SPLITS = ("train", "valid")


@dataclass(frozen=True)
class Expression:
    video_id: str
    expression_id: str          # the key in meta_expressions.json ("0", "1", ...): the submission's folder
    text: str
    object_id: int | None       # None where the split's masks are private (valid, test)


@dataclass(frozen=True)
class Video:
    video_id: str
    split: str
    frames: tuple[str, ...]                     # frame names in time order ("00000", "00005", ...)
    expressions: tuple[Expression, ...]
    categories: dict[int, str] = field(default_factory=dict)          # object id -> category (train)
    object_frames: dict[int, tuple[str, ...]] = field(default_factory=dict)   # frames where it is annotated


@dataclass(frozen=True)
class Problem:
    video_id: str
    reason: str
    expression_id: str | None = None

    def to_dict(self) -> dict:
        return {"video_id": self.video_id, "expression_id": self.expression_id, "reason": self.reason}


@dataclass
class ReferYouTubeVOSRaw:
    root: Path
    videos: dict[str, Video]                   # every video of the splits present
    splits: tuple[str, ...]                    # the splits this root holds
    competition_valid: frozenset[str] = frozenset()   # valid videos that are not in the test file
    problems: list[Problem] = field(default_factory=list)

    def frame_path(self, video: Video, frame: str) -> Path:
        return self.root / video.split / "JPEGImages" / video.video_id / f"{frame}.jpg"

    def mask_path(self, video: Video, frame: str) -> Path:
        return self.root / video.split / "Annotations" / video.video_id / f"{frame}.png"


def meta_expressions_path(root: Path, split: str) -> Path:
    return Path(root) / "meta_expressions" / split / "meta_expressions.json"


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetRootError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise DatasetRootError(f"{path}: expected {{\"videos\": {{...}}}}")
    return data["videos"]


def read_meta_expressions(path: Path, split: str, problems: list[Problem]) -> dict[str, tuple[tuple[str, ...],
                                                                                              tuple[Expression, ...]]]:
    """{video_id: (frames, expressions)} of one meta_expressions.json; bad entries become problems."""
    out = {}
    for vid, entry in _load(path).items():
        reason = unsafe_reason(vid)
        if reason is not None:
            problems.append(Problem(str(vid), f"{split}: video id {vid!r} in meta_expressions.json is not a plain "
                                              f"folder name ({reason}): skipped"))
            continue
        frames = tuple(str(f) for f in entry.get("frames", []))
        if not frames:
            problems.append(Problem(vid, f"{split}: no frames listed in meta_expressions.json"))
            continue
        bad_frames = [f for f in frames if unsafe_reason(f) is not None]
        if bad_frames:
            problems.append(Problem(vid, f"{split}: frame names {bad_frames[:3]} are not plain file names: skipped"))
            continue
        expressions = []
        for eid, e in sorted(entry.get("expressions", {}).items(), key=lambda kv: _id_order(kv[0])):
            reason = unsafe_reason(eid)
            if reason is not None:
                problems.append(Problem(vid, f"expression id {eid!r} is not a plain file name ({reason}): skipped",
                                        str(eid)))
                continue
            text = (e.get("exp") or "").strip()
            if not text:
                problems.append(Problem(vid, "empty expression", eid))
                continue
            oid = e.get("obj_id")
            try:
                object_id = int(oid) if oid is not None else None
            except ValueError:
                problems.append(Problem(vid, f"malformed obj_id {oid!r}", eid))
                continue
            expressions.append(Expression(vid, eid, text, object_id))
        out[vid] = (frames, tuple(expressions))
    return out


def _id_order(expression_id: str) -> tuple:
    """Numeric ids in numeric order, then any others by name (the released ids are "0", "1", ...)."""
    return (0, int(expression_id), "") if expression_id.isdigit() else (1, 0, expression_id)


def read_refer_youtube_vos(root: Path) -> ReferYouTubeVOSRaw:
    """Read the index files of every split the root holds; raise DatasetRootError if it holds none."""
    root = Path(root)
    problems: list[Problem] = []
    videos: dict[str, Video] = {}
    present = [s for s in SPLITS if meta_expressions_path(root, s).is_file()]
    if not present:
        raise DatasetRootError(f"{root} is not a Refer-YouTube-VOS root: no meta_expressions/"
                               f"{{{','.join(SPLITS)}}}/meta_expressions.json")
    for split in present:
        meta = {}
        if split == "train":
            meta_path = root / "train" / "meta.json"
            if not meta_path.is_file():
                raise DatasetRootError(f"{root}: train/meta.json is missing (object categories and frames)")
            meta = _load(meta_path)
        for vid, (frames, expressions) in read_meta_expressions(meta_expressions_path(root, split), split,
                                                                problems).items():
            objects = meta.get(vid, {}).get("objects", {}) if split == "train" else {}
            categories = {int(k): str(v.get("category", "")) for k, v in objects.items()}
            object_frames = {int(k): tuple(str(f) for f in v.get("frames", [])) for k, v in objects.items()}
            kept = []
            for e in expressions:
                if split == "train" and (e.object_id is None or e.object_id not in categories):
                    problems.append(Problem(vid, f"obj_id {e.object_id!r} not in train/meta.json", e.expression_id))
                    continue
                kept.append(e)
            videos[vid] = Video(vid, split, frames, tuple(kept), categories, object_frames)
    competition = frozenset()
    if "valid" in present:
        valid = {v for v, video in videos.items() if video.split == "valid"}
        test_path = meta_expressions_path(root, "test")
        competition = frozenset(valid - set(_load(test_path)) if test_path.is_file() else valid)
    return ReferYouTubeVOSRaw(root, videos, tuple(present), competition, problems)


def plan_refer_youtube_vos(root: Path, *, holdout_videos: int = 0, seed: int = 0) -> DatasetPlan:
    """Train videos as MTTR trains on them (consecutive windows, every frame supervised); `holdout_videos`
    train videos drawn with `seed` held out with their masks (split "holdout", whole-video samples), so
    that J&F can be measured without the server; the competition's valid videos (split "valid", no masks)
    for the submission."""
    raw = read_refer_youtube_vos(root)
    problems = [PlanProblem(p.video_id, p.reason, details={"expression_id": p.expression_id}) for p in raw.problems]
    train = sorted(v for v, video in raw.videos.items() if video.split == "train" and video.expressions)
    if holdout_videos < 0 or holdout_videos > len(train):
        raise DatasetRootError(f"--holdout-videos {holdout_videos}: the root has {len(train)} train videos with "
                               "expressions")
    held = set(random.Random(seed).sample(train, holdout_videos)) if holdout_videos else set()
    videos = []
    for vid in sorted(raw.videos):
        video = raw.videos[vid]
        if video.split == "valid" and vid not in raw.competition_valid:
            continue   # a test-server video: not part of the valid submission
        if not video.expressions:
            problems.append(PlanProblem(vid, "no usable expression"))
            continue
        frame_files = tuple(str(raw.frame_path(video, f)) for f in video.frames)
        if video.split == "train":
            masks = tuple(str(p) if p.is_file() else "" for p in (raw.mask_path(video, f) for f in video.frames))
            split, sampling = ("holdout", "whole_video") if vid in held else ("train", "consecutive")
            expressions = tuple(ExpressionSpec(e.expression_id, int(e.object_id), e.text) for e in video.expressions)
            videos.append(VideoSpec(vid, split, sampling, expressions, frame_files=frame_files,
                                    frame_names=video.frames, annotation_format="palette_png",
                                    annotation_files=masks, object_ids=tuple(sorted(video.categories))))
        else:
            expressions = tuple(ExpressionSpec(e.expression_id, -1, e.text) for e in video.expressions)
            videos.append(VideoSpec(vid, "valid", "whole_video", expressions, frame_files=frame_files,
                                    frame_names=video.frames))
    splits = {}
    if any(v.split == "train" for v in videos):
        splits["train"] = {"kind": "window", "masks": True}
    if held:
        splits["holdout"] = {"kind": "video", "masks": True}
    if any(v.split == "valid" for v in videos):
        splits["valid"] = {"kind": "video", "masks": False}
    if not splits:
        raise DatasetRootError(f"{root}: no video with a usable expression")
    eval_split = "holdout" if held else ("valid" if "valid" in splits else "train")
    info = {"splits_present": list(raw.splits), "competition_valid_videos": len(raw.competition_valid),
            "holdout": {"videos": len(held), "seed": seed, "video_ids": sorted(held),
                        "note": "train videos held out with their masks for local J&F; not the server's valid"}}
    counts = {"expressions": sum(len(v.expressions) for v in videos)}
    return DatasetPlan("refer-youtube-vos", videos, problems, counts, splits, eval_split, info)
