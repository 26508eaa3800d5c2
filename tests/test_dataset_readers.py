"""Raw readers of Refer-YouTube-VOS and Refer-DAVIS17 on their layouts as shipped (the real valid
meta_expressions.json among them)."""
import json
import shutil

import pytest

from losh.pipeline.datasets import refer_davis
from losh.pipeline.datasets import refer_youtube_vos as ryv
from tests.conftest import SHARED

REAL_VALID = SHARED / "data" / "refer_youtube_vos_valid_meta_expressions.json"


@pytest.mark.skipif(not REAL_VALID.is_file(), reason="needs ../shared/data")
def test_the_real_valid_meta_expressions_are_read_unchanged(tmp_path):
    target = ryv.meta_expressions_path(tmp_path, "valid")
    target.parent.mkdir(parents=True)
    shutil.copy(REAL_VALID, target)
    raw = ryv.read_refer_youtube_vos(tmp_path)
    shipped = json.loads(REAL_VALID.read_text())["videos"]
    assert raw.splits == ("valid",) and not raw.problems
    assert len(raw.videos) == 507 and sum(len(v.expressions) for v in raw.videos.values()) == 2096
    for vid, entry in shipped.items():
        video = raw.videos[vid]
        assert video.split == "valid" and list(video.frames) == entry["frames"]
        assert [(e.expression_id, e.text) for e in video.expressions] == \
            [(k, v["exp"].strip()) for k, v in entry["expressions"].items()]
        assert all(e.object_id is None for e in video.expressions)      # valid masks are private
    assert raw.competition_valid == frozenset(shipped)                   # no test file: every valid video
    # with the test file beside it, the competition's valid split is valid minus test
    test_ids = sorted(shipped)[:305]
    test_file = ryv.meta_expressions_path(tmp_path, "test")
    test_file.parent.mkdir(parents=True)
    test_file.write_text(json.dumps({"videos": {v: shipped[v] for v in test_ids}}))
    assert len(ryv.read_refer_youtube_vos(tmp_path).competition_valid) == 202
    # the plan prepare-data works from: the 202 videos, each expression a whole-video sample without masks,
    # its frames where the data set puts them
    plan = ryv.plan_refer_youtube_vos(tmp_path)
    assert plan.splits == {"valid": {"kind": "video", "masks": False}} and plan.eval_split == "valid"
    assert len(plan.videos) == 202 and {v.video_id for v in plan.videos} == set(shipped) - set(test_ids)
    video = plan.videos[0]
    assert video.sampling == "whole_video" and all(e.instance_id == -1 for e in video.expressions)
    assert video.frame_files[0] == str(tmp_path / "valid" / "JPEGImages" / video.video_id /
                                       f"{shipped[video.video_id]['frames'][0]}.jpg")
    assert plan.counts["expressions"] == sum(len(shipped[v.video_id]["expressions"]) for v in plan.videos)


def test_a_root_with_the_train_split_alone_is_read_with_its_problems(tmp_path):
    frames = ["00000", "00005", "00010"]
    meta = {"videos": {"a1": {"objects": {"1": {"category": "dog", "frames": frames},
                                          "2": {"category": "cat", "frames": frames[1:]}}}}}
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "meta.json").write_text(json.dumps(meta))
    expressions = {"videos": {"a1": {"frames": frames, "expressions": {
        "0": {"exp": "a dog running", "obj_id": "1"}, "1": {"exp": "a cat", "obj_id": "2"},
        "2": {"exp": "a ghost", "obj_id": "7"}, "3": {"exp": "  ", "obj_id": "1"}}}}}
    path = ryv.meta_expressions_path(tmp_path, "train")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(expressions))
    raw = ryv.read_refer_youtube_vos(tmp_path)
    video = raw.videos["a1"]
    assert raw.splits == ("train",) and raw.competition_valid == frozenset()
    assert [(e.expression_id, e.object_id) for e in video.expressions] == [("0", 1), ("1", 2)]
    assert video.categories == {1: "dog", 2: "cat"} and video.object_frames[2] == ("00005", "00010")
    assert sorted((p.expression_id, p.reason) for p in raw.problems) == [
        ("2", "obj_id 7 not in train/meta.json"), ("3", "empty expression")]
    assert raw.frame_path(video, "00005") == tmp_path / "train/JPEGImages/a1/00005.jpg"
    assert raw.mask_path(video, "00005") == tmp_path / "train/Annotations/a1/00005.png"
    (tmp_path / "train" / "meta.json").unlink()
    with pytest.raises(ryv.DatasetRootError, match="meta.json"):
        ryv.read_refer_youtube_vos(tmp_path)
    with pytest.raises(ryv.DatasetRootError, match="not a Refer-YouTube-VOS root"):
        ryv.read_refer_youtube_vos(tmp_path / "train")


def test_refer_davis_reads_the_four_sets_with_their_encodings_and_known_name_mismatches(tmp_path):
    sets = tmp_path / "DAVIS" / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("classic-car\nbike-packing\n")
    texts = tmp_path / "davis_text_annotations"
    texts.mkdir()
    (texts / "Davis17_annot1.txt").write_text('bike-packing 1 "a man riding a bike"\nbear 1 "a bear"\n')
    (texts / "Davis17_annot1_full_video.txt").write_text('clasic-car 1 "a white classic car"\nbroken line\n')
    (texts / "Davis17_annot2.txt").write_bytes('bike-packing 2 "the bike of the man with a caf\xe9 bag"\n'.encode("latin-1"))
    (texts / "Davis17_annot2_full_video.txt").write_bytes('classic-car 1 ""\n'.encode("latin-1"))
    raw = refer_davis.read_refer_davis(tmp_path)
    assert raw.sequences == ("classic-car", "bike-packing")
    assert [(e.expression_set, e.sequence, e.object_id) for e in raw.expressions] == [
        ("annot1", "bike-packing", 1), ("annot1_full_video", "classic-car", 1), ("annot2", "bike-packing", 2)]
    assert raw.of_set("annot2")[0].text == "the bike of the man with a café bag"   # latin-1 decoded
    reasons = [(p.expression_set, p.reason) for p in raw.problems]
    assert ("annot1_full_video", "sequence name 'clasic-car' read as 'classic-car'") in reasons
    assert ("annot1_full_video", "malformed line 'broken line'") in reasons
    assert ("annot2_full_video", "empty expression") in reasons
    assert raw.masks_dir("bear") == tmp_path / "DAVIS/Annotations_unsupervised/480p/bear"
    (texts / "Davis17_annot2.txt").unlink()
    with pytest.raises(refer_davis.DatasetRootError, match="Davis17_annot2.txt"):
        refer_davis.read_refer_davis(tmp_path)


def test_synthetic_refer_youtube_vos_layout_reads_back(tmp_path):
    import numpy as np
    from PIL import Image

    from losh.pipeline.synth_layouts import write_synthetic_refer_youtube_vos

    summary = write_synthetic_refer_youtube_vos(tmp_path, videos=3, seed=1, height=64, width=88, frames=20,
                                                progress=False)
    raw = ryv.read_refer_youtube_vos(tmp_path)
    assert raw.splits == ("train", "valid") and not raw.problems
    train = [v for v in raw.videos.values() if v.split == "train"]
    valid = [v for v in raw.videos.values() if v.split == "valid"]
    assert (len(train), len(valid)) == (2, 1) and raw.competition_valid == {valid[0].video_id}
    assert summary["expressions"] == sum(len(v.expressions) for v in raw.videos.values())
    for video in train:
        assert video.frames == ("00000", "00005", "00010", "00015")      # every 5th frame released
        for e in video.expressions:
            assert e.object_id in video.categories
        for oid, names in video.object_frames.items():                     # meta.json agrees with the PNGs
            for name in video.frames:
                mask = np.asarray(Image.open(raw.mask_path(video, name)))
                assert (oid in np.unique(mask)) == (name in names)
        assert Image.open(raw.frame_path(video, video.frames[0])).size == (88, 64)
    assert all(e.object_id is None for e in valid[0].expressions)
    assert not (tmp_path / "valid" / "Annotations").exists()


def test_synthetic_refer_davis_layout_reads_back(tmp_path):
    from losh.pipeline.synth_layouts import write_synthetic_refer_davis

    write_synthetic_refer_davis(tmp_path, videos=2, seed=2, height=64, width=88, frames=10, progress=False)
    raw = refer_davis.read_refer_davis(tmp_path)
    assert len(raw.sequences) == 1 and not raw.problems
    sequence = raw.sequences[0]
    counts = {name: len(raw.of_set(name)) for name in refer_davis.EXPRESSION_SETS}
    assert len(set(counts.values())) == 1 and counts["annot1"] >= 2
    assert len(list(raw.frames_dir(sequence).glob("*.jpg"))) == 10
    assert len(list(raw.masks_dir(sequence).glob("*.png"))) == 10


def test_losh_synth_writes_each_layout(tmp_path):
    from typer.testing import CliRunner

    from losh.cli.main import app

    runner = CliRunner()
    for layout in ("refer-youtube-vos", "refer-davis"):
        result = runner.invoke(app, ["synth", str(tmp_path / layout), "--layout", layout, "--videos", "3",
                                     "--height", "64", "--width", "88", "--frames", "12"])
        assert result.exit_code == 0, result.output
    assert ryv.read_refer_youtube_vos(tmp_path / "refer-youtube-vos").videos
    assert refer_davis.read_refer_davis(tmp_path / "refer-davis").expressions
    assert runner.invoke(app, ["synth", str(tmp_path / "x"), "--layout", "kinetics"]).exit_code == 2
