"""Refer-YouTube-VOS submission zip: layout, PNG format, atomic writing, checks."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from losh.evaluation.submission import SubmissionWriter, check_submission, read_submission


def masks_for(rng):
    return {
        ("v1", "0", "00000"): rng.random((6, 8)) > 0.5,
        ("v1", "0", "00005"): np.zeros((6, 8), dtype=bool),
        ("v1", "1", "00000"): (rng.random((6, 8)) > 0.5).astype(np.uint8),  # 0/1 integers
        ("v2", "0", "00010"): np.where(rng.random((5, 7)) > 0.5, 255, 0),  # 0/255 integers
    }


def write(path, masks):
    with SubmissionWriter(path) as writer:
        for (video, expression, frame), mask in masks.items():
            writer.add(video, expression, frame, mask)
    return path


def test_write_and_read_back(tmp_path):
    masks = masks_for(np.random.default_rng(0))
    path = write(tmp_path / "submission.zip", masks)
    read = read_submission(path)
    assert set(read) == set(masks)
    for key, mask in masks.items():
        assert read[key].dtype == np.uint8
        np.testing.assert_array_equal(read[key] > 0, np.asarray(mask) != 0)


def test_layout_is_annotations_folder_of_single_channel_0_255_pngs(tmp_path):
    path = write(tmp_path / "submission.zip", masks_for(np.random.default_rng(1)))
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert all(name.startswith("Annotations/") for name in names)
        # folder entries as `zip -r` / shutil.make_archive write them
        assert {"Annotations/", "Annotations/v1/", "Annotations/v1/0/", "Annotations/v2/0/"} <= set(names)
        files = [name for name in names if not name.endswith("/")]
        assert sorted(files) == [
            "Annotations/v1/0/00000.png",
            "Annotations/v1/0/00005.png",
            "Annotations/v1/1/00000.png",
            "Annotations/v2/0/00010.png",
        ]
        for name in files:
            image = Image.open(io.BytesIO(archive.read(name)))
            assert image.format == "PNG" and image.mode == "L"
            assert set(np.unique(np.array(image)).tolist()) <= {0, 255}


def test_an_error_inside_the_with_block_leaves_no_zip(tmp_path):
    path = tmp_path / "submission.zip"
    with pytest.raises(RuntimeError, match="inference failed"):
        with SubmissionWriter(path) as writer:
            writer.add("v1", "0", "00000", np.ones((4, 4), dtype=bool))
            raise RuntimeError("inference failed")
    assert list(tmp_path.iterdir()) == []  # neither the zip nor its temporary file


def test_zip_appears_only_when_the_writer_closes(tmp_path):
    path = tmp_path / "submission.zip"
    with SubmissionWriter(path) as writer:
        writer.add("v1", "0", "00000", np.ones((4, 4), dtype=bool))
        assert not path.exists()
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == ["submission.zip"]
    with pytest.raises(FileExistsError):
        with SubmissionWriter(path):
            pass
    with SubmissionWriter(path, overwrite=True) as writer:
        writer.add("v9", "0", "00000", np.zeros((2, 2), dtype=bool))
    assert set(read_submission(path)) == {("v9", "0", "00000")}


def test_duplicates_and_bad_masks_are_refused(tmp_path):
    with SubmissionWriter(tmp_path / "submission.zip") as writer:
        writer.add("v1", "0", "00000", np.ones((4, 4), dtype=bool))
        with pytest.raises(ValueError, match="duplicate submission entry Annotations/v1/0/00000.png"):
            writer.add("v1", "0", "00000", np.zeros((4, 4), dtype=bool))
        with pytest.raises(ValueError, match="HxW"):
            writer.add("v1", "0", "00001", np.ones((1, 4, 4), dtype=bool))
        with pytest.raises(ValueError, match="not binary"):
            writer.add("v1", "0", "00002", np.full((4, 4), 0.7))  # probabilities: threshold first
        with pytest.raises(ValueError, match=".png extension"):
            writer.add("v1", "0", "00003.png", np.ones((4, 4), dtype=bool))
        with pytest.raises(ValueError, match="path component"):
            writer.add("../v1", "0", "00004", np.ones((4, 4), dtype=bool))
        assert len(writer) == 1
    with pytest.raises(RuntimeError, match="inside its `with` block"):
        writer.add("v1", "0", "00005", np.ones((4, 4), dtype=bool))


def test_check_submission_reports_what_is_missing(tmp_path):
    path = write(tmp_path / "submission.zip", masks_for(np.random.default_rng(2)))
    expected = {
        "v1": {"0": ["00000", "00005"], "1": ["00000"]},
        "v2": {"0": ["00010"]},
    }
    assert check_submission(path, expected) == []
    expected["v1"]["0"].append("00010")
    expected["v1"]["2"] = ["00000"]
    expected["v3"] = {"0": ["00000"]}
    assert sorted(check_submission(path, expected)) == [
        "missing expression 'v1'/'2'",
        "missing frame Annotations/v1/0/00010.png",
        "missing video 'v3'",
    ]


def test_check_submission_reports_bad_pngs_and_stray_entries(tmp_path):
    path = tmp_path / "foreign.zip"
    buffer = io.BytesIO()
    Image.fromarray(np.full((3, 3, 3), 128, dtype=np.uint8)).save(buffer, format="PNG")  # RGB
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("Annotations/v1/0/00000.png", buffer.getvalue())
        archive.writestr("v1/0/00001.png", b"")  # no Annotations/ top level
    problems = check_submission(path, {"v1": {"0": ["00000"]}})
    assert problems == [
        "Annotations/v1/0/00000.png: PNG mode 'RGB', expected 'L' (single-channel 8-bit)",
        "unexpected entry 'v1/0/00001.png'",
    ]
    with pytest.raises(ValueError, match="unexpected entry"):
        read_submission(path)
