"""The synthetic scenes of `losh.pipeline.synth` written in the Refer-YouTube-VOS, Refer-DAVIS17 and JHMDB-Sentences
layouts (see pipeline/datasets/), so that tests and demos read every data set's reader on real-layout files.

Refer-YouTube-VOS: every 5th frame of a source video is released as JPEG (00000, 00005, ...); train has a
palette PNG per released frame (pixel = object id, 1-based; 0 background), meta.json and expressions with
obj_id; valid has frames and expressions only. Refer-DAVIS17: 480p-named folders with every frame, palette
PNG masks, ImageSets/2017/{train,val}.txt and the four expression files (annot2 in latin-1). JHMDB-Sentences:
Rename_Images/<class>/<video>/%05d.png (every frame, 1-based), puppet_mask/<class>/<video>/puppet_mask.mat (key
part_mask, uint8 H x W x T, one actor per video; in some videos T < frames) and jhmdb_annotation.txt (video_id,query).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from losh.pipeline.synth import plan_video
from losh.pipeline.synth_output import synthetic_set
from losh.pipeline.synth_render import render, write_text
from losh.pipeline.synth_scenes import video_ids
from losh.schemas.atomic import atomic_path, atomic_write_json
from losh.schemas.progress import progress_bar

RELEASE_STEP = 5       # Refer-YouTube-VOS releases every 5th frame
_PALETTE = [0, 0, 0] + [v for i in range(1, 256) for v in ((i * 97) % 256, (i * 57) % 256, (i * 151) % 256)]


def _save_palette_png(path: Path, labels: np.ndarray) -> None:
    """labels (H, W) int, -1 background -> a palette PNG whose pixel value is the 1-based object id."""
    image = Image.fromarray((labels + 1).astype(np.uint8), mode="P")
    image.putpalette(_PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)


def scenes(videos: int, seed: int, height: int, width: int, frames: int):
    """(index, planned video) of a set's videos, each from its own seed (the layouts' common scenes)."""
    set_seed, *seeds = np.random.SeedSequence(seed).spawn(videos + 1)
    ids = video_ids(np.random.default_rng(set_seed), videos)
    for index in range(videos):
        yield index, plan_video(seeds[index], ids[index], 0, index % 3 == 0, index % 2 == 0, None,
                                 height, width, frames, annotated_per_video=3)


def write_synthetic_refer_youtube_vos(out: Path, videos: int = 6, seed: int = 0, *, height: int = 96,
                                      width: int = 128, frames: int = 40, progress: bool = True,
                                      overwrite: bool = False) -> dict:
    """Train (2/3 of the videos) with masks, valid (the rest) without; returns a summary. `out`: as
    `write_synthetic_a2d`'s (missing or empty; with `overwrite`, a set `losh synth` wrote)."""
    params = {"videos": videos, "seed": seed, "height": height, "width": width, "frames": frames}
    with synthetic_set(out, "refer-youtube-vos", params, overwrite) as root:
        return _write_refer_youtube_vos(root, videos, seed, height, width, frames, progress)


def _write_refer_youtube_vos(out: Path, videos: int, seed: int, height: int, width: int, frames: int,
                             progress: bool) -> dict:
    train_meta, expressions = {}, {"train": {}, "valid": {}}
    released = list(range(0, frames, RELEASE_STEP))
    names = [f"{t:05d}" for t in released]
    n_valid = max(1, videos // 3)
    for index, video in progress_bar(scenes(videos, seed, height, width, frames), total=videos, desc="synth videos",
                                     unit="video", disable=not progress):
        split = "valid" if index >= videos - n_valid else "train"
        visible: dict[int, list[str]] = {}
        for t, name in zip(released, names):
            image, labels, _ = render(video, t, height, width)
            _save_jpeg(out / split / "JPEGImages" / video.video_id / f"{name}.jpg", image)
            if split == "train":
                _save_palette_png(out / "train" / "Annotations" / video.video_id / f"{name}.png", labels)
                for instance_id in np.unique(labels).tolist():
                    if instance_id >= 0:
                        visible.setdefault(instance_id + 1, []).append(name)
        shapes = {i.instance_id + 1: i.shape for i in video.instances}
        if split == "train":
            train_meta[video.video_id] = {"objects": {str(oid): {"category": shapes[oid], "frames": visible[oid]}
                                                      for oid in sorted(visible)}}
        exps = {}
        for instance_id, query, _short in video.expressions:
            if split == "train" and instance_id + 1 not in visible:
                continue
            exps[str(len(exps))] = {"exp": query, **({"obj_id": str(instance_id + 1)} if split == "train" else {})}
        expressions[split][video.video_id] = {"expressions": exps, "frames": names}
    _write_json(out / "train" / "meta.json", {"videos": train_meta})
    for split, entries in expressions.items():
        _write_json(out / "meta_expressions" / split / "meta_expressions.json", {"videos": entries})
    return {"videos": videos, "train_videos": videos - n_valid, "valid_videos": n_valid,
            "released_frames": len(names), "expressions": sum(len(v["expressions"]) for e in expressions.values()
                                                              for v in e.values())}


def write_synthetic_refer_davis(out: Path, videos: int = 4, seed: int = 0, *, height: int = 96, width: int = 128,
                                frames: int = 24, progress: bool = True, overwrite: bool = False) -> dict:
    """Val sequences (half, at least one) and train ones; the four expression sets from the same scenes. `out`: as
    `write_synthetic_a2d`'s (missing or empty; with `overwrite`, a set `losh synth` wrote)."""
    params = {"videos": videos, "seed": seed, "height": height, "width": width, "frames": frames}
    with synthetic_set(out, "refer-davis", params, overwrite) as root:
        return _write_refer_davis(root, videos, seed, height, width, frames, progress)


def _write_refer_davis(out: Path, videos: int, seed: int, height: int, width: int, frames: int,
                       progress: bool) -> dict:
    davis = out / "DAVIS"
    split_of, lines = {}, {name: [] for name in ("annot1", "annot1_full_video", "annot2", "annot2_full_video")}
    n_val = max(1, videos // 2)
    for index, video in progress_bar(scenes(videos, seed, height, width, frames), total=videos, desc="synth videos",
                                     unit="video", disable=not progress):
        sequence = video.video_id.lower()
        split_of[sequence] = "val" if index < n_val else "train"
        for t in range(frames):
            image, labels, _ = render(video, t, height, width)
            _save_jpeg(davis / "JPEGImages" / "480p" / sequence / f"{t:05d}.jpg", image)
            _save_palette_png(davis / "Annotations_unsupervised" / "480p" / sequence / f"{t:05d}.png", labels)
        for instance_id, query, short in video.expressions:
            # first-frame sets describe the object, full-video sets its action too (as the annotators did)
            lines["annot1"].append(f'{sequence} {instance_id + 1} "{short}"')
            lines["annot1_full_video"].append(f'{sequence} {instance_id + 1} "{query}"')
            lines["annot2"].append(f'{sequence} {instance_id + 1} "{short}"')
            lines["annot2_full_video"].append(f'{sequence} {instance_id + 1} "{query}"')
    sets = davis / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (sets / f"{split}.txt").write_text("".join(f"{s}\n" for s, sp in split_of.items() if sp == split))
    texts = out / "davis_text_annotations"
    texts.mkdir(parents=True, exist_ok=True)
    for name, rows in lines.items():
        encoding = "latin-1" if name.startswith("annot2") else "utf-8"
        (texts / f"Davis17_{name}.txt").write_bytes(("\n".join(rows) + "\n").encode(encoding))
    return {"videos": videos, "val_sequences": n_val, "expressions_per_set": len(lines["annot1"])}


# JHMDB action class folder per synthetic action: lower case, letters and underscores (the real set's
# classes read like brush_hair, climb_stairs, jump, pullup, walk).
JHMDB_CLASSES = {"left": "move_left", "right": "move_right", "up": "move_up", "down": "move_down",
                 "jump": "jump", "still": "stand", "rotate": "rotate"}
JHMDB_SHORT_MASKS = 2  # the last video has this many fewer masks than frames, as some real videos do


def jhmdb_puppet(labels: list[np.ndarray], instance_ids: list[int]) -> int:
    """The annotated actor of a JHMDB video: the instance visible in the most of `labels`' frames (ties: the
    lowest id), so that its masks are seldom empty. The other instances stay in the frames, unannotated."""
    visible = {i: sum(bool(np.any(frame == i)) for frame in labels) for i in instance_ids}
    return max(sorted(visible), key=lambda i: visible[i])


def _save_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def _save_puppet_mask(path: Path, masks: np.ndarray) -> None:
    """masks (H, W, T) uint8 0/1 -> MATLAB v5 file with key part_mask."""
    from scipy.io import savemat

    with atomic_path(path) as tmp:   # keeps the .mat suffix, so savemat does not append one
        savemat(tmp, {"part_mask": masks}, do_compression=True)


def write_synthetic_jhmdb(out: Path, videos: int = 6, seed: int = 0, *, height: int = 96, width: int = 128,
                          frames: int = 24, progress: bool = True, overwrite: bool = False) -> dict:
    """JHMDB-Sentences: one annotated actor (the "puppet", `jhmdb_puppet`) per scene, its long expression the
    video's query, the scene's other instances unannotated distractors (as the real set's background people);
    the class folder is the puppet's action (`JHMDB_CLASSES`). The last video has `JHMDB_SHORT_MASKS` fewer
    masks than frames, so that a reader must drop the frames past the mask count (as MTTR does).

    Deterministic for a seed: the same CSV and PNG bytes and the same mask arrays (the .mat header holds a
    creation time). Returns a summary. `out`: as `write_synthetic_a2d`'s (missing or empty; with `overwrite`, a set
    `losh synth` wrote).
    """
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if frames < JHMDB_SHORT_MASKS + 3:
        # MTTR samples 3 masked frames per video, the short-mask video included
        raise ValueError(f"frames must be >= {JHMDB_SHORT_MASKS + 3}, got {frames}")
    params = {"videos": videos, "seed": seed, "height": height, "width": width, "frames": frames}
    with synthetic_set(out, "jhmdb", params, overwrite) as root:
        return _write_jhmdb(root, videos, seed, height, width, frames, progress)


def _write_jhmdb(out: Path, videos: int, seed: int, height: int, width: int, frames: int, progress: bool) -> dict:
    images_root, masks_root = out / "Rename_Images", out / "puppet_mask"
    rows, puppets, classes = [], {}, {}
    short_video, masked_total = None, 0
    for index, video in progress_bar(scenes(videos, seed, height, width, frames), total=videos, desc="synth videos",
                                     unit="video", disable=not progress):
        rendered = [render(video, t, height, width)[:2] for t in range(frames)]
        n_masks = frames - JHMDB_SHORT_MASKS if index == videos - 1 else frames
        all_ids = [i.instance_id for i in video.instances]
        puppet = jhmdb_puppet([labels for _, labels in rendered[:n_masks]], all_ids)
        action_class = JHMDB_CLASSES[video.instances[all_ids.index(puppet)].action]
        frames_dir = images_root / action_class / video.video_id
        frames_dir.mkdir(parents=True, exist_ok=True)
        for t, (image, _) in enumerate(rendered):
            _save_png(frames_dir / f"{t + 1:05d}.png", image)
        masks = np.stack([(labels == puppet).astype(np.uint8) for _, labels in rendered[:n_masks]], axis=-1)
        mask_dir = masks_root / action_class / video.video_id
        mask_dir.mkdir(parents=True, exist_ok=True)
        _save_puppet_mask(mask_dir / "puppet_mask.mat", masks)
        rows.append([video.video_id, video.expressions[[e[0] for e in video.expressions].index(puppet)][1]])
        puppets[video.video_id], classes[video.video_id] = puppet, action_class
        masked_total += n_masks
        if n_masks < frames:
            short_video = video.video_id
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "query"])
    writer.writerows(rows)
    write_text(out / "jhmdb_annotation.txt", buffer.getvalue())
    return {"videos": videos, "frames": frames, "masked_frames": masked_total,
            "short_mask_video": short_video, "short_mask_frames": frames - JHMDB_SHORT_MASKS,
            "classes": classes, "puppets": puppets}
