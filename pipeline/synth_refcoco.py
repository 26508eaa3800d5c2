"""The synthetic scenes of `losh.pipeline.synth` as still images in the refer toolkit's layout (RefCOCO, RefCOCO+,
RefCOCOg: pipeline/datasets/refcoco.py), so that the reader, prepare-data and the still-image clips are tested on
files laid out as the real ones:

ROOT/images/mscoco/images/train2014/COCO_train2014_<image id:012d>.jpg    one scene's frame an image, shared
ROOT/refcoco/refs(unc).p, ROOT/refcoco+/refs(unc).p                       splits train/val/testA/testB
ROOT/refcocog/refs(umd).p (train/val/test), ROOT/refcocog/refs(google).p (train/val)
ROOT/<set>/instances.json                                                  COCO's format

Every visible shape is a COCO annotation and a ref in each set; the refs pickles are written as Python 2 writes
them with protocol 2 (pipeline/py2_pickle.py). The segmentations take COCO's three forms in turn: polygons,
uncompressed RLE (a list of counts) and compressed RLE (a string). The sentences name colour, shape and position,
in each set's style: RefCOCO terse and positional ("left circle", "red square on the right", and position-only
ones: "left", "right one"), RefCOCO+ appearance only ("small blue triangle"), RefCOCOg longer ("a big red circle
that is next to the blue square").
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from losh.pipeline.py2_pickle import py2_pickle
from losh.pipeline.synth import plan_video
from losh.pipeline.synth_language import relation_options, where_options
from losh.pipeline.synth_output import synthetic_set
from losh.pipeline.synth_render import render
from losh.pipeline.synth_scenes import SHAPES, Instance
from losh.schemas.atomic import atomic_path, atomic_write_json
from losh.schemas.progress import progress_bar

IMAGES = Path("images") / "mscoco" / "images" / "train2014"
FIRST_IMAGE_ID = 9001
FIRST_ANNOTATION_ID = 300001
SCENE_FRAMES = 8            # the scene is planned over a few frames; one annotated frame becomes the image
SEGMENTATION_FORMS = ("polygons", "rle", "compressed_rle")
SET_SPLITS = {("refcoco", "unc"): ("train", "val", "testA", "testB"),
              ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
              ("refcocog", "umd"): ("train", "val", "test"), ("refcocog", "google"): ("train", "val")}


def write_synthetic_refcoco(out: Path, images: int = 40, seed: int = 0, *, height: int = 128, width: int = 176,
                            progress: bool = True, overwrite: bool = False) -> dict:
    """RefCOCO, RefCOCO+ and RefCOCOg over `images` synthetic images; returns a summary. Deterministic for a seed.
    `out`: missing or empty; with `overwrite`, a set `losh synth` wrote (pipeline/synth_output.py)."""
    if images < 4:
        raise ValueError(f"images must be >= 4 (one for each of train, val, testA, testB), got {images}")
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be >= 32, got {height}x{width}")
    params = {"images": images, "seed": seed, "height": height, "width": width}
    with synthetic_set(out, "refcoco", params, overwrite) as root:
        return _write_refcoco(root, images, seed, height, width, progress)


def _write_refcoco(out: Path, count: int, seed: int, height: int, width: int, progress: bool) -> dict:
    set_seed, *scene_seeds = np.random.SeedSequence(seed).spawn(count + 1)
    rng = np.random.default_rng(set_seed)
    split_of = {key: image_splits(rng, count, splits) for key, splits in SET_SPLITS.items()}
    coco_images, annotations, objects = [], [], []   # objects: (image index, annotation, still instance, scene)
    forms = dict.fromkeys(SEGMENTATION_FORMS, 0)
    for index in progress_bar(range(count), desc="synth images", unit="image", disable=not progress):
        image_id = FIRST_IMAGE_ID + index
        video = plan_video(scene_seeds[index], str(image_id), 0, False, False, None, height, width, SCENE_FRAMES,
                           annotated_per_video=1)
        t = video.annotated[0] - 1
        picture, labels, _ = render(video, t, height, width)
        name = f"COCO_train2014_{image_id:012d}.jpg"
        with atomic_path(out / IMAGES / name) as tmp:
            Image.fromarray(picture).save(tmp, format="JPEG", quality=95)
        coco_images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        still = [replace(i, xs=i.xs[t:t + 1], ys=i.ys[t:t + 1], angles=i.angles[t:t + 1]) for i in video.instances]
        visible = [i for i in still if np.any(labels == i.instance_id)]
        for instance in visible:
            mask = labels == instance.instance_id
            form = SEGMENTATION_FORMS[len(annotations) % len(SEGMENTATION_FORMS)]
            segmentation, form = coco_segmentation(mask, form)
            forms[form] += 1
            rows, cols = np.nonzero(mask)
            annotation = {"id": FIRST_ANNOTATION_ID + len(annotations), "image_id": image_id,
                          "segmentation": segmentation, "area": float(mask.sum()),
                          "bbox": [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                                   float(rows.max() - rows.min() + 1)],
                          "category_id": SHAPES.index(instance.shape) + 1, "iscrowd": 0}
            annotations.append(annotation)
            objects.append((index, annotation, instance, visible))
    categories = [{"id": k + 1, "name": shape, "supercategory": "shape"} for k, shape in enumerate(SHAPES)]
    instances = {"info": {"description": "losh synthetic RefCOCO"}, "images": coco_images,
                 "annotations": annotations, "categories": categories}
    summary: dict = {"images": count, "objects": len(objects), "segmentations": forms, "refs": {}, "sentences": {}}
    for dataset in ("refcoco", "refcoco+", "refcocog"):
        atomic_write_json(out / dataset / "instances.json", instances, indent=None)
        sentences = [set_sentences(rng, dataset, instance, others, height, width)
                     for _, _, instance, others in objects]
        for (name, split_by), splits in split_of.items():
            if name != dataset:
                continue
            refs, sent_id = [], 0
            for ref_id, ((index, annotation, instance, _), texts) in enumerate(zip(objects, sentences)):
                entries = [{"tokens": text.split(), "raw": text[0].upper() + text[1:] + ".", "sent_id": sent_id + k,
                            "sent": text} for k, text in enumerate(texts)]
                sent_id += len(entries)
                refs.append({"image_id": annotation["image_id"], "split": splits[index], "sentences": entries,
                             "file_name": f"COCO_train2014_{annotation['image_id']:012d}_{annotation['id']}.jpg",
                             "category_id": annotation["category_id"], "ann_id": annotation["id"],
                             "sent_ids": [e["sent_id"] for e in entries], "ref_id": ref_id})
            with atomic_path(out / dataset / f"refs({split_by}).p") as tmp:
                tmp.write_bytes(py2_pickle(refs))
            summary["refs"][f"{dataset} {split_by}"] = {s: sum(r["split"] == s for r in refs)
                                                        for s in SET_SPLITS[(name, split_by)]}
            summary["sentences"][f"{dataset} {split_by}"] = sent_id
    return summary


def image_splits(rng: np.random.Generator, count: int, splits: tuple[str, ...]) -> list[str]:
    """The split of each image: an eighth (at least one) in each split but train, the rest train."""
    others = splits[1:]
    share = max(1, count // 8) if len(others) > 1 else max(1, count // 5)
    order = rng.permutation(count).tolist()
    split_of = ["train"] * count
    for k, split in enumerate(others):
        for index in order[k * share:(k + 1) * share]:
            split_of[index] = split
    return split_of


def coco_segmentation(mask: np.ndarray, form: str) -> tuple[list | dict, str]:
    """(segmentation, its form) of a binary mask in COCO's `form`; polygons fall back to RLE for a shape too small
    to outline."""
    if form == "polygons":
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        if polygons:
            return polygons, form
        form = "rle"
    if form == "rle":   # column-major runs, starting with the background's
        flat = mask.astype(np.uint8).reshape(-1, order="F")
        changes = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], changes, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat[0]:
            counts = [0, *counts]
        return {"counts": counts, "size": list(mask.shape)}, form
    from pycocotools import mask as coco_mask  # only where a synthetic RefCOCO set is written

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": encoded["counts"].decode("ascii"), "size": list(mask.shape)}, form


def set_sentences(rng: np.random.Generator, dataset: str, instance: Instance, others: list[Instance], height: int,
                  width: int) -> list[str]:
    """Two or three sentences for one object in the style of `dataset` (module docstring)."""
    size, colour, shape = instance.appearance
    rank = sorted(others, key=lambda o: o.xs[0]).index(instance)
    position = "left" if rank == 0 else "right" if rank == len(others) - 1 else "middle"
    if dataset == "refcoco":
        texts = [f"{position} {shape}", f"{colour} {shape} on the {position}" if position != "middle"
                 else f"{colour} {shape} in the middle"]
        if rng.random() < 0.4:   # a position alone, as many RefCOCO expressions are
            texts.append(str(rng.choice([position, f"{position} one"])))
        return texts
    if dataset == "refcoco+":    # no location words
        return [f"{size} {colour} {shape}", f"{colour} {shape}"] + ([f"{colour} one"] if rng.random() < 0.3 else [])
    unique = [o for o in others if o is not instance and
              [p.appearance[1:] for p in others].count(o.appearance[1:]) == 1]
    names = {o.instance_id: f"the {o.colour} {o.shape}" for o in unique}
    details = relation_options(instance, unique, names, width) + where_options(instance, height, width)
    detail = str(rng.choice(details)) if details else f"on the {position}" if position != "middle" else "in the middle"
    return [f"a {size} {colour} {shape} that is {detail}", f"the {colour} {shape} {detail}"]
