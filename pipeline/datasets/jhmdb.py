"""Reader of the JHMDB-Sentences raw layout, as it ships (and as MTTR reads it):

ROOT/Rename_Images/<class>/<video_id>/%05d.png            every frame, 1-based names
ROOT/puppet_mask/<class>/<video_id>/puppet_mask.mat       MATLAB v5, key `part_mask`: uint8 H x W x T (frame i
                                                          is [:, :, i-1]); frames past T have no mask and are
                                                          dropped, as MTTR does
ROOT/jhmdb_annotation.txt                                 CSV `video_id,query`: one expression (one actor) a video

JHMDB-Sentences is scored, never trained on (models trained on A2D-Sentences). MTTR's protocol scores 3
frames per video, each with the window of 8 frames around it (clamped to the video), frozen in its
`jhmdb_sentences_samples_metadata.json` (`[video_id, frame_path, mask_path, n_frames, query]` entries):
give that file to reproduce the published protocol exactly; without it 3 frames a video are drawn with a
seed, and the list used is written next to the prepared data in the same format.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from losh.pipeline.datasets.base import (
    DatasetPlan,
    DatasetRootError,
    ExpressionSpec,
    Problem,
    VideoSpec,
    decoded_lines,
    id_problem,
)

ANNOTATION_FILE = "jhmdb_annotation.txt"
MASK_KEY = "part_mask"
FRAMES_PER_VIDEO = 3
METADATA_FILE = "jhmdb_sentences_samples_metadata.json"   # the list a prepared set used (MTTR's format)
METADATA_ROOT = "./jhmdb_sentences"                       # the root MTTR's file names its paths under
# MTTR's published list (Apache-2.0, protocols/NOTICE.md): `losh prepare-data --dataset jhmdb`'s default
MTTR_PROTOCOL = Path(__file__).parent / "protocols" / METADATA_FILE


@dataclass(frozen=True)
class JhmdbVideo:
    video_id: str
    action: str                        # the class folder
    query: str
    frame_files: tuple[Path, ...]      # every PNG, in frame order
    mask_file: Path


@dataclass
class JhmdbRaw:
    root: Path
    videos: dict[str, JhmdbVideo]
    problems: list[Problem] = field(default_factory=list)


def clean_query(text: str) -> str:
    """MTTR's clean-up of a JHMDB query: whitespace runs become one space (lowercasing is the model's)."""
    return " ".join(text.split())


def read_annotations(path: Path, problems: list[Problem]) -> dict[str, str]:
    """{video_id: query} of jhmdb_annotation.txt; empty and repeated rows become problems."""
    queries: dict[str, str] = {}
    reader = csv.DictReader(text for _, text in decoded_lines(path, problems))
    if not {"video_id", "query"} <= set(reader.fieldnames or []):
        raise DatasetRootError(f"{path}: header must hold video_id,query; found {reader.fieldnames}")
    for row in reader:
        vid, query = (row["video_id"] or "").strip(), clean_query(row["query"] or "")
        if not vid or not query:
            problems.append(Problem(vid or "?", "empty video id or query in jhmdb_annotation.txt"))
        elif id_problem(vid) is not None:
            problems.append(id_problem(vid, "video id in jhmdb_annotation.txt"))
        elif vid in queries:
            problems.append(Problem(vid, "repeated row in jhmdb_annotation.txt (kept the first)"))
        else:
            queries[vid] = query
    return queries


def read_jhmdb(root: Path) -> JhmdbRaw:
    """The annotated videos found on disk; a video of the annotation file without frames or masks is a problem."""
    root = Path(root)
    annotations = root / ANNOTATION_FILE
    if not annotations.is_file():
        raise DatasetRootError(f"{root} is not a JHMDB-Sentences root: missing {ANNOTATION_FILE}")
    problems: list[Problem] = []
    queries = read_annotations(annotations, problems)
    frame_dirs = {p.name: p for p in (root / "Rename_Images").glob("*/*") if p.is_dir()}
    mask_files = {p.parent.name: p for p in (root / "puppet_mask").glob("*/*/puppet_mask.mat")}
    videos = {}
    for vid, query in sorted(queries.items()):
        if vid not in frame_dirs:
            problems.append(Problem(vid, "listed in jhmdb_annotation.txt but no Rename_Images/<class>/<video> folder"))
            continue
        frames = tuple(sorted(frame_dirs[vid].glob("*.png")))
        if not frames:
            problems.append(Problem(vid, "no PNG frames in its Rename_Images folder"))
            continue
        if vid not in mask_files:
            problems.append(Problem(vid, "missing puppet_mask/<class>/<video>/puppet_mask.mat"))
            continue
        videos[vid] = JhmdbVideo(vid, frame_dirs[vid].parent.name, query, frames, mask_files[vid])
    return JhmdbRaw(root, videos, problems)


def mask_count(path: Path) -> int:
    """T of the .mat's H x W x T part_mask, read from its header (scipy's whosmat), without the masks."""
    from scipy.io import whosmat

    shapes = {name: shape for name, shape, _ in whosmat(str(path))}
    if MASK_KEY not in shapes or len(shapes[MASK_KEY]) not in (2, 3):
        raise ValueError(f"no H x W x T `{MASK_KEY}` in it (found {sorted(shapes)})")
    shape = shapes[MASK_KEY]
    return shape[2] if len(shape) == 3 else 1


def read_samples_metadata(path: Path) -> dict[str, list[tuple[int, int, str]]]:
    """MTTR's protocol file -> {video_id: [(frame, n_frames, query), ...]}."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetRootError(f"{path}: not a samples metadata file ({e})") from e
    out: dict[str, list[tuple[int, int, str]]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 5:
            raise DatasetRootError(f"{path}: entry {i} is not [video_id, frame_path, mask_path, n_frames, query]")
        vid, frame_path, _mask_path, n_frames, query = entry
        out.setdefault(vid, []).append((int(Path(frame_path).stem), int(n_frames), clean_query(query)))
    return out


def metadata_entries(video: JhmdbVideo, frames: list[int], n_frames: int, root_name: str = METADATA_ROOT) -> list[list]:
    """The protocol entries of a video, in MTTR's format (paths under MTTR's ./jhmdb_sentences root)."""
    base = f"{root_name}/Rename_Images/{video.action}/{video.video_id}"
    mask = f"{root_name}/puppet_mask/{video.action}/{video.video_id}/puppet_mask.mat"
    return [[video.video_id, f"{base}/{f:05d}.png", mask, n_frames, video.query] for f in frames]


def plan_jhmdb(root: Path, *, samples_metadata: Path | None = None, seed: int = 0) -> DatasetPlan:
    """Test samples: 3 frames per video, each with its window, from `samples_metadata` (MTTR's published
    list) or drawn with `seed`; the list used goes into the plan's files (PREP/jhmdb_sentences_samples_metadata.json)."""
    raw = read_jhmdb(root)
    problems = list(raw.problems)
    protocol = read_samples_metadata(samples_metadata) if samples_metadata is not None else None
    rng = random.Random(seed)
    videos, used = [], []
    for vid, video in sorted(raw.videos.items()):
        try:
            masks = mask_count(video.mask_file)
        except (OSError, ValueError, NotImplementedError) as e:
            problems.append(Problem(vid, f"unreadable puppet_mask.mat: {e}"))
            continue
        total = min(len(video.frame_files), masks)
        if masks < len(video.frame_files):
            problems.append(Problem(vid, f"{masks} masks for {len(video.frame_files)} frames: frames past the mask "
                                         "count dropped (as MTTR)", details={"frames": len(video.frame_files),
                                                                             "masks": masks}))
        if protocol is not None:
            if vid not in protocol:
                problems.append(Problem(vid, "not in the samples metadata file: not scored"))
                continue
            entries = protocol[vid]
            frames = sorted({f for f, _, _ in entries})
            listed = {n for _, n, _ in entries}
            if listed != {total}:
                problems.append(Problem(vid, f"the samples metadata says {sorted(listed)} frames, the video has "
                                             f"{total} (frames with masks)", details={"frames": total}))
            outside = [f for f in frames if not 1 <= f <= total]
            if outside:
                problems.append(Problem(vid, f"samples metadata frames {outside} outside the video's 1..{total}"))
                frames = [f for f in frames if f not in outside]
            if not frames:
                continue
        else:
            frames = sorted(rng.sample(range(1, total + 1), min(FRAMES_PER_VIDEO, total)))
        used += metadata_entries(video, frames, total)
        videos.append(VideoSpec(vid, "test", "annotated_frames", (ExpressionSpec("0", 1, video.query),),
                                frame_files=tuple(str(p) for p in video.frame_files[:total]),
                                frame_names=tuple(p.stem for p in video.frame_files[:total]),
                                annotation_format="jhmdb_mat", annotation_files=(str(video.mask_file),),
                                object_ids=(1,), annotated=tuple(frames)))
    if protocol is not None:
        for vid in sorted(set(protocol) - set(raw.videos) - {p.video_id for p in raw.problems}):
            problems.append(Problem(vid, "in the samples metadata file but not a readable video of this root"))
    if not videos and protocol is not None and raw.videos:
        raise DatasetRootError(f"{root}: none of its {len(raw.videos)} videos is in the samples metadata file "
                               f"{samples_metadata}: for another set of videos, draw 3 frames a video with "
                               "--samples-metadata seed (and --seed)")
    if not videos:
        raise DatasetRootError(f"{root}: no JHMDB-Sentences video with frames, masks and an expression")
    info = {"protocol": "samples metadata file" if protocol is not None else f"3 frames a video drawn with seed {seed}",
            "samples_metadata": str(samples_metadata) if samples_metadata is not None else METADATA_FILE,
            "frames_per_video": FRAMES_PER_VIDEO}
    return DatasetPlan("jhmdb", videos, problems, {"expressions": len(videos)},
                       splits={"test": {"kind": "window", "masks": True}}, eval_split="test", info=info,
                       files={METADATA_FILE: used})
