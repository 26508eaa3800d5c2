"""RefCOCO, RefCOCO+ and RefCOCOg for LoSh-S's pre-training: the refer toolkit's pickles read as data only, the
reader on the synthetic refer-toolkit layout, prepare-data of still images, the clips made from them at training
time, training without optical flow, and the short text of terse expressions."""
from __future__ import annotations

import builtins
import json
import os
import pickle
import pickletools
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from losh.cli.main import app
from losh.data.still_images import still_image_clip
from losh.pipeline.datasets import plan_dataset
from losh.pipeline.datasets.base import DatasetPlan, DatasetRootError, ExpressionSpec, VideoSpec
from losh.pipeline.datasets.refcoco import IMAGES
from losh.pipeline.flows import compute_flows
from losh.pipeline.prepare import extract_shorts, read_coco_annotation
from losh.pipeline.py2_pickle import py2_pickle
from losh.pipeline.short_fallback import usable_short
from losh.pipeline.synth_refcoco import write_synthetic_refcoco
from losh.schemas.plain_pickle import RefusedPickle, load_plain_pickle

SETS = {"refcoco": ("unc", "refcoco/refs(unc).p"), "refcoco+": ("unc", "refcoco+/refs(unc).p"),
        "refcocog": ("umd", "refcocog/refs(umd).p")}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A synthetic refer-toolkit root (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("refcoco") / "refer"
    write_synthetic_refcoco(root, images=8, seed=5, height=64, width=88, progress=False)
    return root


@pytest.fixture()
def raw_copy(raw, tmp_path) -> Path:
    shutil.copytree(raw, tmp_path / "refer")
    return tmp_path / "refer"


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    """`raw`'s RefCOCO prepared at its own 64 x 88 size (read-only)."""
    out = tmp_path_factory.mktemp("refcoco_prep") / "prep"
    result = CliRunner().invoke(app, ["prepare-data", "--dataset", "refcoco", "--root", str(raw), "--out", str(out),
                                      "--short-side", "64", "--max-long-side", "88", "--workers", "1"])
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------------------------------- plain pickles

class _Call:
    """An object whose unpickling would call `function(*args)`."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("payload, asked", [
    (lambda marker: _Call(os.system, f"touch {marker}"), "system"),
    (lambda marker: _Call(builtins.eval, f"open({str(marker)!r}, 'w').close()"), "__builtin__.eval"),
    (lambda marker: _Call(builtins.print, "side effect"), "__builtin__.print"),   # protocol 2: Python 2 names
])
def test_a_pickle_that_would_run_code_is_refused_naming_what_it_asks_for(tmp_path, capsys, payload, asked):
    marker = tmp_path / "ran"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "sentences": [payload(marker)]}], protocol=2))
    with pytest.raises(RefusedPickle) as refused:
        load_plain_pickle(path)
    message = str(refused.value)
    assert str(path) in message and asked in message and "refused" in message
    assert "lists, dicts, strings and numbers" in message
    assert not marker.exists() and "side effect" not in capsys.readouterr().out


def test_a_python2_global_is_refused_too(tmp_path):
    path = tmp_path / "old.p"
    path.write_bytes(b"c__builtin__\neval\n(S'1+1'\ntR.")     # protocol 0, as Python 2 writes it
    with pytest.raises(RefusedPickle, match=r"asks for __builtin__\.eval"):
        load_plain_pickle(path)


def test_a_python2_protocol_2_refs_file_loads_as_text(tmp_path):
    refs = [{"ref_id": 0, "ann_id": 300001, "image_id": 9001, "split": "testA", "category_id": 1,
             "file_name": "COCO_train2014_000000009001_300001.jpg", "sent_ids": [0, 1],
             "sentences": [{"tokens": ["left", "guy"], "raw": "Left guy.", "sent_id": 0, "sent": "left guy"},
                           {"tokens": ["man"], "raw": "man", "sent_id": 1, "sent": "man"}],
             "area": 1.5, "big": 2 ** 40}]
    data = py2_pickle(refs)
    opcodes = {op.name for op, _, _ in pickletools.genops(data)}
    assert data[:2] == b"\x80\x02" and "SHORT_BINSTRING" in opcodes and not opcodes & {"BINUNICODE", "GLOBAL"}
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    assert load_plain_pickle(path) == refs
    # a byte string that is not UTF-8 (Python 2 wrote what it held): read as Latin-1
    path.write_bytes(b"\x80\x02]q\x00U\x04caf\xe9q\x01a.")
    assert load_plain_pickle(path) == ["café"]


# -------------------------------------------------------------------------------------------- losh synth

def test_losh_synth_writes_the_refer_toolkit_layout_marked_and_the_same_for_a_seed(tmp_path):
    from losh.pipeline.synth_output import read_marker

    runner = CliRunner()
    args = ["synth", "--layout", "refcoco", "--videos", "4", "--height", "48", "--width", "64", "--seed", "7"]
    for name in ("a", "b"):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 4 and set(summary["refs"]) == {"refcoco unc", "refcoco+ unc", "refcocog umd",
                                                                 "refcocog google"}
    assert list(summary["refs"]["refcoco unc"]) == ["train", "val", "testA", "testB"]
    assert all(count >= 1 for count in summary["refs"]["refcoco unc"].values())
    marker = read_marker(tmp_path / "a")
    assert marker["layout"] == "refcoco" and "refcocog/refs(google).p" in marker["files"]
    assert len(list((tmp_path / "a" / IMAGES).glob("COCO_train2014_*.jpg"))) == 4
    for name in ("refcoco/refs(unc).p", "refcoco+/instances.json", "refcocog/refs(umd).p"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "not empty" in refused.output
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--overwrite"]).exit_code == 0


# ------------------------------------------------------------------------------------------------- reader

@pytest.mark.parametrize("dataset", sorted(SETS))
def test_the_reader_gives_every_ref_of_each_split_with_its_sentences(raw, dataset):
    split_by, refs_path = SETS[dataset]
    refs = load_plain_pickle(raw / refs_path)
    plan = plan_dataset(dataset, raw)
    assert not plan.problems and plan.dataset == dataset and plan.eval_split == "val"
    splits = {r["split"] for r in refs}
    assert set(plan.splits) == splits and all(info == {"kind": "image", "masks": True}
                                              for info in plan.splits.values())
    for split in splits:
        assert sum(v.split == split for v in plan.videos) == sum(r["split"] == split for r in refs)
    assert plan.counts == {"refs": len(refs), "images": 8, "expressions": sum(len(r["sentences"]) for r in refs)}
    video = plan.videos[0]
    assert video.sampling == "image" and video.annotation_format == "coco" and len(video.frame_files) == 1
    assert [e.long for e in video.expressions] == [s["sent"] for s in refs[0]["sentences"]]
    assert {e.instance_id for v in plan.videos for e in v.expressions} == {1}
    if dataset == "refcocog":
        google = plan_dataset("refcocog", raw, split_by="google")
        assert set(google.splits) == {"train", "val"} and google.info["refs_file"] == "refs(google).p"


def test_masks_are_pycocotools_decoding_of_polygons_and_rle(raw):
    coco = COCO(str(raw / "refcoco" / "instances.json"))
    forms = set()
    plan = plan_dataset("refcoco", raw)
    refs = {str(r["ref_id"]): r for r in load_plain_pickle(raw / SETS["refcoco"][1])}
    for video in plan.videos:
        annotation = coco.anns[refs[video.video_id]["ann_id"]]
        segmentation = annotation["segmentation"]
        forms.add("polygons" if isinstance(segmentation, list) else type(segmentation["counts"]).__name__)
        ids, masks = read_coco_annotation(video)[1]
        assert ids.tolist() == [1] and masks.shape == (1, 64, 88)
        assert np.array_equal(masks[0], coco.annToMask(annotation).astype(bool)), video.video_id
        assert masks[0].sum() > 0
    assert forms == {"polygons", "list", "str"}      # polygons, uncompressed and compressed RLE


def _rewrite_refs(path: Path, change) -> None:
    refs = load_plain_pickle(path)
    change(refs)
    path.write_bytes(py2_pickle(refs))


def test_a_ref_without_its_annotation_or_image_is_a_problem_and_the_rest_is_read(raw_copy):
    path = raw_copy / "refcoco" / "refs(unc).p"
    refs = load_plain_pickle(path)
    image_id = refs[-1]["image_id"]
    without_image = [r for r in refs if r["image_id"] == image_id]
    without_annotation = refs[0]
    assert without_annotation["image_id"] != image_id
    _rewrite_refs(path, lambda rs: rs[0].update(ann_id=999999))
    (raw_copy / IMAGES / f"COCO_train2014_{image_id:012d}.jpg").unlink()
    plan = plan_dataset("refcoco", raw_copy)
    reasons = {p.video_id: p.reason for p in plan.problems}
    assert "ann_id 999999 is not in instances.json: skipped" in reasons[str(without_annotation["ref_id"])]
    for ref in without_image:
        assert f"image COCO_train2014_{image_id:012d}.jpg is not in" in reasons[str(ref["ref_id"])]
    assert len(plan.problems) == len(without_image) + 1
    assert len(plan.videos) == len(refs) - len(without_image) - 1


def test_a_ref_id_that_cannot_name_a_file_is_skipped(raw_copy):
    path = raw_copy / "refcoco" / "refs(unc).p"
    _rewrite_refs(path, lambda rs: rs[0].update(ref_id="../escape"))
    plan = plan_dataset("refcoco", raw_copy)
    assert any(p.video_id == "../escape" and "not a plain file or folder name" in p.reason for p in plan.problems)
    assert all(v.video_id != "../escape" for v in plan.videos)


@pytest.mark.parametrize("damage, says", [
    (lambda root: (root / "refcoco/refs(unc).p").write_bytes(pickle.dumps({"refs": []}, protocol=2)),
     "refs(unc).p: a refs file holds a list of refs, this one a dict"),
    (lambda root: (root / "refcoco/refs(unc).p").write_bytes(py2_pickle([{"ref_id": 1}])),
     "refs(unc).p: ref 0 lacks ann_id, image_id, split, sentences"),
    (lambda root: (root / "refcoco/refs(unc).p").write_bytes((root / "refcoco/refs(unc).p").read_bytes()[:50]),
     "refs(unc).p: not a refs file"),
    (lambda root: (root / "refcoco/refs(unc).p").write_bytes(pickle.dumps([_Call(os.system, "true")], protocol=2)),
     "system: refused"),
    (lambda root: (root / "refcoco/instances.json").write_text("{not json"), "instances.json: not valid JSON"),
    (lambda root: (root / "refcoco/instances.json").write_text(json.dumps({"images": []})),
     "instances.json: COCO's format holds a dict with 'images' and 'annotations' lists"),
    (lambda root: (root / "refcoco/instances.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": []})),
     "instances.json: images[0] is not an {'id', 'file_name', 'height', 'width'} dict"),
    (lambda root: (root / "refcoco/instances.json").unlink(), "missing refcoco/instances.json"),
    (lambda root: shutil.rmtree(root / "images"), "no COCO train2014 images folder"),
])
def test_a_malformed_refs_file_or_instances_json_is_refused_naming_it(raw_copy, damage, says):
    damage(raw_copy)
    with pytest.raises(DatasetRootError) as refused:
        plan_dataset("refcoco", raw_copy)
    assert says in str(refused.value)


def test_refcocog_splits_by_umd_or_google_only(raw):
    with pytest.raises(DatasetRootError, match="refcocog ships its refs split by umd or google, not 'unc'"):
        plan_dataset("refcocog", raw, split_by="unc")


# -------------------------------------------------------------------------------------------- prepare-data

def test_prepare_data_stores_each_referred_object_with_its_image_as_a_one_frame_sample(raw, prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    plan = plan_dataset("refcoco", raw)
    assert manifest["dataset"] == "refcoco" and manifest["window"] == 1 and manifest["eval_split"] == "val"
    assert {name: info["kind"] for name, info in manifest["splits"].items()} == dict.fromkeys(plan.splits, "image")
    assert manifest["reader_options"] == {"split_by": "unc", "images": None}
    records = [json.loads(line) for line in (prepared / "samples.jsonl").read_text().splitlines()]
    assert len(records) == plan.counts["expressions"] == manifest["counts"]["samples"]
    assert len(list((prepared / "shards").glob("*.h5"))) == len(plan.videos)
    by_ref = {v.video_id: v for v in plan.videos}
    for record in records:
        assert record["window"] == [1] and record["targets"] == [0] and record["kind"] == "window"
        assert record["sample_id"] == f"{record['video_id']}_{record['expression_id']}"
    video = by_ref[records[0]["video_id"]]
    with h5py.File(prepared / records[0]["shard"], "r") as f:
        assert len(f["frames"]) == 1 and f["annotated/00001/instance_ids"][()].tolist() == [1]
        stored = f["annotated/00001/masks"][0].astype(bool)
        assert json.loads(f.attrs["frame_names"]) == [Path(video.frame_files[0]).stem]
    assert np.array_equal(stored, read_coco_annotation(video)[1][1][0])       # stored at the image's own size


def test_prepare_data_options_of_still_images(raw, tmp_path):
    runner = CliRunner()
    base = ["prepare-data", "--dataset", "refcocog", "--root", str(raw), "--short-side", "32", "--max-long-side", "44",
            "--workers", "1"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "w5"), "--window", "5"])
    assert result.exit_code == 1 and "leave --window out" in result.output and not (tmp_path / "w5").exists()
    images = tmp_path / "coco" / "train2014"
    shutil.copytree(raw / IMAGES, images)
    root = tmp_path / "no_images"
    shutil.copytree(raw, root, ignore=shutil.ignore_patterns("images"))
    result = runner.invoke(app, [*base, "--root", str(root), "--out", str(tmp_path / "google"), "--split-by", "google",
                                 "--images", str(images)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "google" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"} and manifest["reader_options"]["split_by"] == "google"
    assert manifest["counts"]["samples"] == manifest["counts"]["expressions"]
    assert "referred objects in 8 still images" in result.output
    result = runner.invoke(app, ["prepare-data", "--dataset", "a2d", "--root", str(raw), "--out",
                                 str(tmp_path / "a2d"), "--split-by", "unc"])
    assert result.exit_code == 2 and "--split-by and --images are for --dataset refcoco" in result.output


def test_compute_flows_says_still_images_have_none(prepared, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(prepared, data)
    result = CliRunner().invoke(app, ["compute-flows", "--data", str(data)])
    assert result.exit_code == 0 and "no optical flow to compute" in result.output and "loss.fbc=0" in result.output
    with pytest.raises(ValueError, match="still images: there is no optical flow to compute"):
        compute_flows(data, workers=0, progress=False)
    assert not (data / "flows").exists()


# --------------------------------------------------------------------------------------- still-image clips

def _disk_scene(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 110, dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 40) ** 2 + (xx - 60) ** 2 < 22 ** 2
    image[disk] = (230, 20, 20)
    return image, disk[None]


def test_a_still_image_becomes_a_clip_whose_masks_move_with_their_frames():
    image, masks = _disk_scene()
    frames, clip = still_image_clip(image, masks, 5, np.random.default_rng(3))
    assert frames.shape == (5, 96, 128, 3) and frames.dtype == np.uint8 and clip.shape == (5, 1, 96, 128)
    assert sum(np.array_equal(f, image) for f in frames) == 1          # the image itself, somewhere in the clip
    for t in range(5):
        assert not any(np.array_equal(frames[t], frames[u]) for u in range(t))
        inside, outside = frames[t][clip[t, 0]].astype(int), frames[t][~clip[t, 0]].astype(int)
        assert clip[t, 0].sum() > 0.5 * masks.sum()
        # the moved mask covers the moved red disk, and the red lies inside it
        assert np.mean(inside[:, 0] - inside[:, 1] > 100) > 0.9
        assert np.mean(outside[:, 0] - outside[:, 1] > 100) < 0.01
    moved = [not np.array_equal(clip[t, 0], masks[0]) for t in range(5)]
    assert sum(moved) == 4
    again, clip_again = still_image_clip(image, masks, 5, np.random.default_rng(3))
    assert np.array_equal(again, frames) and np.array_equal(clip_again, clip)


def test_the_training_dataset_makes_clips_of_the_model_window_every_frame_supervised(prepared):
    from losh.data.dataset import Augment, ClipDataset, RVOSDataset

    augment = Augment((48, 64), 88, 0.5)
    data = RVOSDataset(prepared, "train", clip_frames=5, augment=augment, seed=2)
    item = data[0]
    assert item["frames"].shape[:2] == (5, 3) and item["long_mask"].shape[0] == 5
    assert item["supervised"] == [0, 1, 2, 3, 4] and item["annotated_index"] == 2
    assert item["instance_masks"].shape[:2] == (5, 1) and bool((item["long_mask"] == item["short_mask"]).all())
    assert item["long_mask"].any()
    again = RVOSDataset(prepared, "train", clip_frames=5, augment=augment, seed=2)[0]
    assert all(bool((item[k] == again[k]).all()) for k in ("frames", "long_mask", "instance_masks"))
    data.set_epoch(1)
    other = data[0]["frames"]
    assert other.shape != item["frames"].shape or not bool((other == item["frames"]).all())
    clips = ClipDataset(prepared, "train", max_expressions=4, clip_frames=5, augment=augment)
    first = clips[0]
    assert len(first) > 1 and all(bool((x["frames"] == first[0]["frames"]).all()) for x in first)
    scored = RVOSDataset(prepared, "val")[0]       # evaluation: the image alone
    assert scored["frames"].shape[0] == 1 and scored["supervised"] == [0]
    with pytest.raises(ValueError, match="still images: they have no optical flow"):
        RVOSDataset(prepared, "train", with_flows=True)


# ------------------------------------------------------------------------------------------------ training

def test_training_on_still_images_refuses_fbc_and_trains_without_opening_a_flow_file(prepared, tmp_path, monkeypatch):
    import losh.schemas.flow_reader as flow_reader

    run = tmp_path / "run"
    base = ["train", "--data", str(prepared), "--out", str(run), "--config", "tiny-s", "--max-steps", "1",
            "--workers", "0", "--batch-size", "2"]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 1 and "still images" in result.output and "--set loss.fbc=0" in result.output
    assert not run.exists()

    opened = []
    real_file = h5py.File

    def recording_file(name, *args, **kwargs):
        opened.append(str(name))
        return real_file(name, *args, **kwargs)

    def no_flows(*_, **__):
        raise AssertionError("a flow reader was made")

    monkeypatch.setattr(h5py, "File", recording_file)
    monkeypatch.setattr(flow_reader.FlowReader, "__init__", no_flows)
    result = CliRunner().invoke(app, [*base, "--set", "loss.fbc=0"])
    assert result.exit_code == 0, result.output
    assert "trained 1 steps" in result.output and "loss_fbc" not in result.output
    assert opened and not [name for name in opened if "flows" in Path(name).parts]
    assert (run / "checkpoints" / "last.pt").is_file()


# ---------------------------------------------------------------------------------------------- short text

TERSE = ["left", "right", "right one", "left one", "guy", "middle", "bottom left", "blue", "man", "kid",
         "on the left", "far right person", "left guy", "front guy"]
# RefCOCO-like expressions: terse and positional (RefCOCO), appearance only (RefCOCO+), longer (RefCOCOg)
EXPRESSIONS = [*TERSE, "man on left", "woman in red", "guy in white shirt", "zebra on left", "girl",
               "left most person", "2nd from left", "closest banana", "top right corner", "person on left in white",
               "left zebra facing right", "guy in black shirt", "man with glasses", "woman wearing white",
               "player with bat", "striped shirt", "blurry person", "yellow",
               "a man wearing a white shirt standing next to a woman", "the giraffe that is eating leaves",
               "a woman in a black dress holding an umbrella", "the brown horse on the left of the white horse"]


def test_a_short_text_naming_nothing_falls_back_to_the_expression():
    assert usable_short("on the left", "on") == "on the left"
    assert usable_short("left zebra facing right", "") == "left zebra facing right"
    assert usable_short("the one that", " the that ") == "the one that"
    assert usable_short("left guy", "left guy") == "left guy"
    assert usable_short("a man wearing a hat", "a man ") == "a man"


@pytest.mark.parametrize("rule", ["subject", "first-verb"])
def test_terse_refcoco_expressions_keep_a_short_text_that_names_the_referent(rule):
    videos = [VideoSpec(str(i), "train", "image", (ExpressionSpec(str(i), 1, text),))
              for i, text in enumerate(EXPRESSIONS)]
    shorts, info = extract_shorts(DatasetPlan("refcoco", videos), "machine", "spacy", rule)
    short = {text: shorts[str(i)][0] for i, text in enumerate(EXPRESSIONS)}
    for text in TERSE:      # one word, or a position: nothing to cut, the expression is its own short text
        assert short[text] == text, (text, short[text])
    assert all(s and s in text for text, s in short.items())
    assert short["a man wearing a white shirt standing next to a woman"] == "a man"
    assert short["woman wearing white"] == "woman"
    assert info["fallback_to_long"] >= 1
