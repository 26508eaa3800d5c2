"""The synthetic scenes of `pipeline.synth` written in the Refer-YouTube-VOS and Refer-DAVIS17 layouts
(see pipeline/datasets/), so that tests and demos read every data set's reader on real-layout files.

Refer-YouTube-VOS: every 5th frame of a source video is released as JPEG (00000, 00005, ...); train has a
palette PNG per released frame (pixel = object id, 1-based; 0 background), meta.json and expressions with
obj_id; valid has frames and expressions only. Refer-DAVIS17: 480p-named folders with every frame, palette
PNG masks, ImageSets/2017/{train,val}.txt and the four expression files (annot2 in latin-1).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.synth import _plan_video, _render, _video_ids

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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _scenes(videos: int, seed: int, height: int, width: int, frames: int):
    set_seed, *seeds = np.random.SeedSequence(seed).spawn(videos + 1)
    ids = _video_ids(np.random.default_rng(set_seed), videos)
    for index in range(videos):
        yield index, _plan_video(seeds[index], ids[index], 0, index % 3 == 0, index % 2 == 0, None,
                                 height, width, frames, annotated_per_video=3)


def write_synthetic_refer_youtube_vos(out: Path, videos: int = 6, seed: int = 0, *, height: int = 96,
                                      width: int = 128, frames: int = 40, progress: bool = True) -> dict:
    """Train (2/3 of the videos) with masks, valid (the rest) without; returns a summary."""
    out = Path(out)
    train_meta, expressions = {}, {"train": {}, "valid": {}}
    released = list(range(0, frames, RELEASE_STEP))
    names = [f"{t:05d}" for t in released]
    n_valid = max(1, videos // 3)
    for index, video in tqdm(_scenes(videos, seed, height, width, frames), total=videos, desc="synth videos",
                             disable=not progress):
        split = "valid" if index >= videos - n_valid else "train"
        visible: dict[int, list[str]] = {}
        for t, name in zip(released, names):
            image, labels, _ = _render(video, t, height, width)
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
                                frames: int = 24, progress: bool = True) -> dict:
    """Val sequences (half, at least one) and train ones; the four expression sets from the same scenes."""
    out = Path(out)
    davis = out / "DAVIS"
    split_of, lines = {}, {name: [] for name in ("annot1", "annot1_full_video", "annot2", "annot2_full_video")}
    n_val = max(1, videos // 2)
    for index, video in tqdm(_scenes(videos, seed, height, width, frames), total=videos, desc="synth videos",
                             disable=not progress):
        sequence = video.video_id.lower()
        split_of[sequence] = "val" if index < n_val else "train"
        for t in range(frames):
            image, labels, _ = _render(video, t, height, width)
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
