"""Deterministic synthetic RVOS data set in the A2D-Sentences on-disk layout (`losh synth`).

Each video shows 2-4 textured shapes (size x colour x shape) on a textured background; each shape
performs one action (moving left/right/up/down, jumping, standing still, rotating). Every instance
gets a long expression (appearance + action, sometimes + location or relation) and a short one (its
subject phrase, written as `short_query`, the "manual" short expression). By design the action
alone never identifies an instance (another instance of a different appearance shares it), and in
about a third of the videos two instances look alike: they share the short expression (whose ground
truth is then the merged mask) while their long expressions differ by the action.

The layout is the one `SPEC.md` describes ("A2D-Sentences on disk") and MTTR's reader expects:
masks stored transposed in the h5 files, 1-based frame numbers, one malformed "1 (copy)" row and one
missed video without annotations, as in the real set.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from losh.pipeline.synth_language import describe
from losh.pipeline.synth_output import synthetic_set
from losh.pipeline.synth_render import FPS, background, render, write_h5, write_mp4, write_text
from losh.pipeline.synth_scenes import (
    COLOURS,
    MEAN_SHADE,
    Video,
    annotated_frames,
    annotation_range,
    make_instances,
    video_ids,
)
from losh.schemas.progress import progress_bar

__all__ = ["COLOURS", "MALFORMED_INSTANCE_ID", "MEAN_SHADE", "plan_video", "write_h5", "write_synthetic_a2d"]

MALFORMED_INSTANCE_ID = "1 (copy)"


def plan_video(seed_sequence: np.random.SeedSequence, video_id: str, subset: int, twins: bool,
                crossing: bool, edge: str | None, height: int, width: int, frames: int,
                annotated_per_video: int) -> Video:
    """Sample a video until every instance is visible in some annotated frame (and twins together
    in one), so that every expression has training samples."""
    rng = np.random.default_rng(seed_sequence)
    annotated = annotated_frames(rng, frames, annotated_per_video, edge)
    for _ in range(100):
        count = int(rng.integers(2, 5))
        if twins or crossing:
            count = max(count, 3)
        instances, z_order = make_instances(rng, count, twins, crossing, annotated, height, width, frames)
        video = Video(video_id=video_id, subset=subset, instances=instances, z_order=z_order,
                       background=background(rng, height, width), annotated=annotated, expressions=[])
        visible = [set(np.unique(render(video, f - 1, height, width, with_image=False)[1]).tolist()) - {-1}
                   for f in annotated]
        every_instance = set().union(*visible) == set(range(count))
        twin_ids = {i.instance_id for i in instances if [o.appearance for o in instances].count(i.appearance) > 1}
        twins_together = not twins or any(twin_ids <= ids for ids in visible)
        if every_instance and twins_together:
            video.expressions = describe(rng, instances, height, width)
            return video
    raise RuntimeError(f"could not lay out video {video_id}: frames too small for its objects?")


def write_synthetic_a2d(out: Path, videos: int = 12, seed: int = 0, *, height: int = 128, width: int = 176,
                        frames: int = 24, annotated_per_video: int = 3, progress: bool = True,
                        overwrite: bool = False) -> dict:
    """Write a synthetic A2D-Sentences data set under `out` and return a summary.

    Deterministic for a seed: same annotation files byte for byte, same decoded frames and masks. `out` must be
    missing or empty; with `overwrite` it may be a set `losh synth` wrote, which is replaced whole (pipeline/
    synth_output.py); anything else raises `FolderNotEmpty` and is left as it is.
    """
    lo, hi = annotation_range(frames)
    if videos < 3:
        raise ValueError(f"videos must be >= 3 (train, test and one missed video), got {videos}")
    if height < 32 or width < 32 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even and >= 32 (mp4v), got {height}x{width}")
    if annotated_per_video < 1 or annotated_per_video > hi - lo + 1:
        raise ValueError(f"annotated_per_video must be in 1..{hi - lo + 1} for {frames} frames, "
                         f"got {annotated_per_video}")
    params = {"videos": videos, "seed": seed, "height": height, "width": width, "frames": frames,
              "annotated_per_video": annotated_per_video}
    with synthetic_set(out, "a2d", params, overwrite) as root:
        return _write_a2d(root, videos, seed, height, width, frames, annotated_per_video, progress)


def _write_a2d(out: Path, videos: int, seed: int, height: int, width: int, frames: int, annotated_per_video: int,
               progress: bool) -> dict:
    """The set, written into the empty folder `out`."""
    clips = out / "Release" / "clips320H"
    texts = out / "text_annotations"
    masks_root = texts / "a2d_annotation_with_instances"
    for directory in (clips, masks_root):
        directory.mkdir(parents=True, exist_ok=True)

    # set-level choices from the first child seed; each video from its own child, so that video i
    # does not depend on how many tries the others took
    set_seed, *video_seeds = np.random.SeedSequence(seed).spawn(videos + 1)
    rng = np.random.default_rng(set_seed)
    ids = video_ids(rng, videos)
    n_test = max(1, round(videos / 3))
    test = set(rng.permutation(videos)[:n_test].tolist())
    train = [i for i in range(videos) if i not in test]
    missed = int(rng.choice(train))  # a train video, so that the test split keeps all its videos
    kept = [int(i) for i in rng.permutation([i for i in range(videos) if i != missed])]
    twins = set(kept[:max(1, round(videos / 3))])
    # occlusion on purpose in about half of the videos (and always in one)
    crossing = {kept[0]} | {i for i in kept if rng.random() < 0.5}
    edges = {kept[0]: "start", kept[-1]: "end"} if len(kept) > 1 else {kept[0]: "start"}
    malformed_video = int(rng.choice([i for i in kept if i not in test] or kept))

    rows: list[list[str]] = []
    summary = {"videos": videos, "train_videos": videos - n_test, "test_videos": n_test,
               "missed_video": ids[missed], "expressions": 0, "annotated_frames": 0, "instances": 0,
               "instance_masks": 0, "occluded_masks": 0, "hidden_instances": 0, "shared_short_groups": 0}
    videoset_lines = []
    for index in progress_bar(range(videos), desc="synth videos", unit="video", disable=not progress):
        video = plan_video(video_seeds[index], ids[index], int(index in test), index in twins,
                            index in crossing, edges.get(index), height, width, frames, annotated_per_video)
        images = []
        annotated_labels = {}
        full_areas = {}
        for t in range(frames):
            image, labels, full_area = render(video, t, height, width)
            images.append(image)
            if t + 1 in video.annotated:
                annotated_labels[t + 1], full_areas[t + 1] = labels, full_area
        write_mp4(clips / f"{video.video_id}.mp4", images)
        videoset_lines.append(",".join(str(v) for v in (
            video.video_id, video.label, 0, f"{frames / FPS:g}", height, width, frames,
            len(video.annotated), video.subset)))
        if index == missed:  # a missed video: listed, clip on disk, no annotations at all
            continue
        video_masks = masks_root / video.video_id
        video_masks.mkdir(exist_ok=True)
        all_ids = [i.instance_id for i in video.instances]
        for frame, labels in annotated_labels.items():
            listed, listed_ids = write_h5(video_masks / f"{frame:05d}.h5", labels, all_ids)
            summary["annotated_frames"] += 1
            summary["instance_masks"] += listed
            summary["hidden_instances"] += len(all_ids) - listed
            summary["occluded_masks"] += sum(int((labels == i).sum()) < full_areas[frame][i] for i in listed_ids)
        for instance_id, query, short in video.expressions:
            rows.append([video.video_id, str(instance_id), query, short])
        if index == malformed_video:
            _, query, short = video.expressions[[e[0] for e in video.expressions].index(1)]
            rows.append([video.video_id, MALFORMED_INSTANCE_ID, query, short])
            summary["malformed_row"] = {"video_id": video.video_id, "instance_id": MALFORMED_INSTANCE_ID,
                                        "query": query}
        shorts = [e[2] for e in video.expressions]
        summary["shared_short_groups"] += sum(shorts.count(s) > 1 for s in set(shorts))
        summary["instances"] += len(video.instances)
        summary["expressions"] += len(video.expressions)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "instance_id", "query", "short_query"])
    writer.writerows(rows)
    write_text(texts / "a2d_annotation.txt", buffer.getvalue())
    write_text(texts / "a2d_missed_videos.txt", ids[missed] + "\n")
    write_text(out / "Release" / "videoset.csv", "\n".join(videoset_lines) + "\n")
    return summary
