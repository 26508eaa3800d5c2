"""Reader of RefCOCO, RefCOCO+ and RefCOCOg in the refer toolkit's layout (github.com/lichengunc/refer), as it ships:

ROOT/refcoco/refs(unc).p        ROOT/refcoco/refs(google).p       ROOT/refcoco/instances.json
ROOT/refcoco+/refs(unc).p       ROOT/refcoco+/instances.json
ROOT/refcocog/refs(umd).p       ROOT/refcocog/refs(google).p      ROOT/refcocog/instances.json
ROOT/images/mscoco/images/train2014/COCO_train2014_000000XXXXXX.jpg     (COCO train2014; elsewhere: `images`)

refs(<split_by>).p: a pickle (Python 2, protocol 2; read as plain data only, schemas/plain_pickle.py) of a list of
refs {"ref_id", "ann_id", "image_id", "split", "sentences": [{"raw", "sent", "tokens", "sent_id"}], "sent_ids",
"category_id", "file_name"}; instances.json: COCO's format, the images and object annotations the refs point at.

Referring *image* segmentation sets, which LoSh-S (as SgMg) is pre-trained on before A2D-Sentences or
Refer-YouTube-VOS (paper 4.2). Each ref (one referred object in one image) is a "video" of one frame whose
object is instance 1; each of its sentences is an expression (`sent`, the lower-cased tokenised text SgMg and
ReferFormer train on; its sent_id the expression id). The object's mask is its COCO segmentation, which the plan
hands to prepare-data (`VideoSpec.coco_segmentation`). Splits are the refs' own, of kind "image".
"""
from __future__ import annotations

import json
from pathlib import Path

from losh.pipeline.coco_masks import segmentation_problem
from losh.pipeline.datasets.base import DatasetPlan, DatasetRootError, ExpressionSpec, Problem, VideoSpec, id_problem
from losh.schemas.plain_pickle import load_plain_pickle
from losh.schemas.safe_paths import unsafe_reason

# data set -> its folder under ROOT, the split_by values it ships (the first is the default)
SETS = {"refcoco": ("refcoco", ("unc", "google")), "refcoco+": ("refcoco+", ("unc",)),
        "refcocog": ("refcocog", ("umd", "google"))}
# the refs' splits (unc: train/val/testA/testB; umd: train/val/test; RefCOCOg's google: train/val), in this order
SPLITS = ("train", "val", "test", "testA", "testB")
IMAGES = Path("images") / "mscoco" / "images" / "train2014"    # under ROOT, as the refer toolkit keeps COCO
INSTANCES = "instances.json"
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def refs_file(split_by: str) -> str:
    """The refs file of a split_by: refs(unc).p, refs(umd).p, refs(google).p."""
    return f"refs({split_by}).p"


def _malformed(path: Path, what: str) -> DatasetRootError:
    return DatasetRootError(f"{path}: {what}")


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_refs(path: Path) -> list[dict]:
    """The refs of a refs(<split_by>).p file, each checked for the fields the reader uses (any other is ignored);
    a file that is not such a list is refused naming it and what is wrong."""
    try:
        refs = load_plain_pickle(path, where=str(path))
    except OSError as e:
        raise DatasetRootError(f"{path}: unreadable ({e})") from None
    except Exception as e:   # noqa: BLE001 - a refused or damaged pickle: the file is named, not unpickled
        raise DatasetRootError(f"{path}: not a refs file ({e})") from None
    if not isinstance(refs, list):
        raise _malformed(path, f"a refs file holds a list of refs, this one a {type(refs).__name__}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise _malformed(path, f"ref {i} is a {type(ref).__name__}, not a dict")
        missing = [k for k in REF_KEYS if k not in ref]
        if missing:
            raise _malformed(path, f"ref {i} lacks {', '.join(missing)}")
        if not all(_integer(ref[k]) or isinstance(ref[k], str) for k in ("ref_id", "ann_id", "image_id")):
            raise _malformed(path, f"ref {i}: ref_id, ann_id and image_id must be integers")
        if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) and "sent" in s and "sent_id" in s
                                                             for s in ref["sentences"]):
            raise _malformed(path, f"ref {i} (ref_id {ref['ref_id']!r}): sentences must be a list of "
                                   "{'sent', 'sent_id', ...} dicts")
    return refs


def read_instances(path: Path) -> tuple[dict[object, dict], dict[object, dict]]:
    """({image id: image}, {annotation id: annotation}) of a COCO instances.json; a file that is not COCO's format
    is refused naming it and what is wrong."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise DatasetRootError(f"{path}: unreadable ({e})") from None
    except ValueError as e:
        raise DatasetRootError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise _malformed(path, "COCO's format holds a dict with 'images' and 'annotations' lists")
    images, annotations = {}, {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "height", "width")):
            raise _malformed(path, f"images[{i}] is not an {{'id', 'file_name', 'height', 'width'}} dict")
        if not (_integer(image["height"]) and _integer(image["width"]) and image["height"] > 0 and image["width"] > 0):
            raise _malformed(path, f"images[{i}] (id {image['id']!r}): height and width must be positive integers")
        if not (_integer(image["id"]) or isinstance(image["id"], str)):
            raise _malformed(path, f"images[{i}]: id {image['id']!r} is not an integer")
        images[image["id"]] = image
    for i, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or not all(k in annotation for k in ("id", "image_id", "segmentation")):
            raise _malformed(path, f"annotations[{i}] is not an {{'id', 'image_id', 'segmentation'}} dict")
        if not (_integer(annotation["id"]) or isinstance(annotation["id"], str)):
            raise _malformed(path, f"annotations[{i}]: id {annotation['id']!r} is not an integer")
        annotations[annotation["id"]] = annotation
    return images, annotations


def plan_refcoco(root: Path, dataset: str = "refcoco", *, split_by: str | None = None,
                 images: Path | None = None) -> DatasetPlan:
    """One one-frame video per ref of ROOT/<dataset>/refs(<split_by>).p with its image and object mask, one
    expression per sentence. A ref whose annotation, image entry or image file is missing, or whose id cannot
    name a file, is a problem (reported, skipped); an unreadable refs file or instances.json is refused."""
    if dataset not in SETS:
        raise ValueError(f"unknown RefCOCO set {dataset!r}; one of {', '.join(SETS)}")
    folder_name, split_bys = SETS[dataset]
    split_by = split_by or split_bys[0]
    if split_by not in split_bys:
        raise DatasetRootError(f"{dataset} ships its refs split by {' or '.join(split_bys)}, not {split_by!r}")
    root = Path(root)
    folder = root / folder_name
    refs_path, instances_path = folder / refs_file(split_by), folder / INSTANCES
    missing = [str(p.relative_to(root)) for p in (refs_path, instances_path) if not p.is_file()]
    if missing:
        raise DatasetRootError(f"{root} is not a refer toolkit data root for {dataset}: missing {', '.join(missing)}")
    image_dir = Path(images) if images is not None else root / IMAGES
    if not image_dir.is_dir():
        raise DatasetRootError(f"no COCO train2014 images folder at {image_dir}: unpack train2014.zip there, or give "
                               "its place with --images")
    refs = read_refs(refs_path)
    coco_images, annotations = read_instances(instances_path)
    problems: list[Problem] = []
    videos: list[VideoSpec] = []
    seen: set[str] = set()
    on_disk: dict[str, bool] = {}     # image file -> present (an image holds several refs)
    for ref in refs:
        vid = str(ref["ref_id"])
        problem = id_problem(vid, "ref_id")
        if problem is not None:
            problems.append(problem)
            continue
        if vid in seen:
            problems.append(Problem(vid, f"ref_id repeated in {refs_path.name} (kept the first)"))
            continue
        seen.add(vid)
        if ref["split"] not in SPLITS:
            problems.append(Problem(vid, f"split {ref['split']!r} is not one of {', '.join(SPLITS)}: skipped"))
            continue
        annotation = annotations.get(ref["ann_id"])
        if annotation is None:
            problems.append(Problem(vid, f"ann_id {ref['ann_id']!r} is not in {INSTANCES}: skipped"))
            continue
        image = coco_images.get(ref["image_id"])
        if image is None or annotation["image_id"] != ref["image_id"]:
            what = "is not in" if image is None else f"is not the image of annotation {ref['ann_id']!r} in"
            problems.append(Problem(vid, f"image_id {ref['image_id']!r} {what} {INSTANCES}: skipped"))
            continue
        name = str(image["file_name"])
        reason = unsafe_reason(name)
        if reason is not None:
            problems.append(Problem(vid, f"image file name {name!r} is not a plain file name ({reason}): skipped"))
            continue
        if name not in on_disk:
            on_disk[name] = (image_dir / name).is_file()
        if not on_disk[name]:
            problems.append(Problem(vid, f"image {name} is not in {image_dir}: skipped"))
            continue
        height, width = image["height"], image["width"]
        bad = segmentation_problem(annotation["segmentation"], height, width)
        if bad is not None:
            problems.append(Problem(vid, f"annotation {ref['ann_id']!r} in {INSTANCES} holds {bad}: skipped"))
            continue
        expressions = []
        for sentence in ref["sentences"]:
            expression_id = str(sentence["sent_id"])
            text = " ".join(sentence["sent"].split()) if isinstance(sentence["sent"], str) else ""
            problem = id_problem(expression_id, "sent_id")
            if problem is not None:
                problems.append(Problem(vid, problem.reason))
            elif not text:
                problems.append(Problem(vid, f"sentence {expression_id}: empty expression"))
            elif expression_id in {e.expression_id for e in expressions}:
                problems.append(Problem(vid, f"sent_id {expression_id} repeated in this ref (kept the first)"))
            else:
                expressions.append(ExpressionSpec(expression_id, 1, text))
        if not expressions:
            problems.append(Problem(vid, "no usable sentence: skipped"))
            continue
        videos.append(VideoSpec(vid, ref["split"], "image", tuple(expressions), frame_files=(str(image_dir / name),),
                                frame_names=(Path(name).stem,), annotation_format="coco",
                                coco_segmentation=json.dumps(annotation["segmentation"]), orig_size=(height, width)))
    if not videos:
        raise DatasetRootError(f"{root}: no ref of {refs_path.name} with its image, object mask and a sentence "
                               f"({len(problems)} problems, first: {problems[0].reason if problems else 'no refs'})")
    counts = {"refs": len(videos), "images": len({v.frame_files[0] for v in videos}),
              "expressions": sum(len(v.expressions) for v in videos)}
    info = {"split_by": split_by, "refs_file": refs_path.name, "images": str(image_dir),
            "long_text": "the sentences' `sent` (lower-cased, tokenised), as SgMg and ReferFormer train on"}
    splits = {s: {"kind": "image", "masks": True} for s in SPLITS if any(v.split == s for v in videos)}
    return DatasetPlan(dataset, videos, problems, counts, splits=splits, eval_split="val", info=info)
