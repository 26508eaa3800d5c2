"""`losh synth`: the synthetic set follows the A2D-Sentences layout and means what its text says."""
import csv
import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from losh.pipeline.synth import COLOURS, MALFORMED_INSTANCE_ID, MEAN_SHADE, write_synthetic_a2d
from losh.pipeline.synth_render import write_h5 as _write_h5

VIDEOS, HEIGHT, WIDTH, FRAMES = 6, 64, 88, 12
SETTINGS = dict(videos=VIDEOS, height=HEIGHT, width=WIDTH, frames=FRAMES, annotated_per_video=3, progress=False)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("synth")
    return {
        "a": (base / "a", write_synthetic_a2d(base / "a", seed=0, **SETTINGS)),
        "a_again": (base / "a_again", write_synthetic_a2d(base / "a_again", seed=0, **SETTINGS)),
        "b": (base / "b", write_synthetic_a2d(base / "b", seed=1, **SETTINGS)),
    }


def _videoset(root: Path) -> list[list[str]]:
    with open(root / "Release" / "videoset.csv", newline="") as f:
        return list(csv.reader(f))


def _annotations(root: Path) -> list[dict]:
    with open(root / "text_annotations" / "a2d_annotation.txt", newline="") as f:
        return list(csv.DictReader(f))


def _missed(root: Path) -> list[str]:
    return (root / "text_annotations" / "a2d_missed_videos.txt").read_text().splitlines()


def _frames(root: Path, video_id: str) -> list[np.ndarray]:
    """Decoded RGB frames."""
    capture = cv2.VideoCapture(str(root / "Release" / "clips320H" / f"{video_id}.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def _read_h5(path: Path) -> tuple[list[int], np.ndarray, np.ndarray, dict]:
    """As MTTR reads it: instances, masks transposed back to (N, H, W), boxes, raw shapes."""
    with h5py.File(path, "r") as f:
        instances = [int(i) for i in f["instance"]]
        raw = np.array(f["reMask"])
        boxes = np.array(f["reBBox"])
        info = {"keys": set(f.keys()), "mask_shape": raw.shape, "mask_dtype": raw.dtype, "ids_ndim": f["instance"].ndim}
    masks = raw[np.newaxis] if len(instances) == 1 else raw
    return instances, masks.transpose(0, 2, 1), boxes, info


def _annotated(root: Path) -> dict[str, dict[int, Path]]:
    """video_id -> {1-based frame: h5 path}."""
    masks_root = root / "text_annotations" / "a2d_annotation_with_instances"
    return {d.name: {int(p.stem): p for p in sorted(d.glob("*.h5"))} for d in sorted(masks_root.iterdir())}


def _valid_rows(root: Path) -> list[dict]:
    return [r for r in _annotations(root) if r["instance_id"].isdigit()]


def test_videoset_has_nine_columns_no_header_and_both_subsets(sets):
    root, summary = sets["a"]
    rows = _videoset(root)
    assert len(rows) == VIDEOS
    assert all(len(r) == 9 for r in rows)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", r[0]) for r in rows)  # no header row
    assert len({r[0] for r in rows}) == VIDEOS
    for vid, label, _start, _end, height, width, total, annotated, subset in rows:
        assert 11 <= int(label) <= 79 and 1 <= int(label) % 10 <= 9
        assert (int(height), int(width), int(total)) == (HEIGHT, WIDTH, FRAMES)
        assert subset in ("0", "1")
    subsets = [r[8] for r in rows]
    assert subsets.count("1") == round(VIDEOS / 3) == summary["test_videos"]
    assert subsets.count("0") == VIDEOS - round(VIDEOS / 3) == summary["train_videos"]
    annotated = _annotated(root)
    for r in rows:
        if r[0] in annotated:
            assert int(r[7]) == len(annotated[r[0]])


def test_every_clip_decodes_to_all_frames_at_the_written_size(sets):
    root, _ = sets["a"]
    for row in _videoset(root):
        frames = _frames(root, row[0])
        assert len(frames) == FRAMES
        assert all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)


def test_one_missed_video_with_a_clip_but_no_annotations(sets):
    root, summary = sets["a"]
    missed = _missed(root)
    assert missed == [summary["missed_video"]]
    assert missed[0] in {r[0] for r in _videoset(root)}
    assert (root / "Release" / "clips320H" / f"{missed[0]}.mp4").is_file()
    assert not (root / "text_annotations" / "a2d_annotation_with_instances" / missed[0]).exists()
    assert missed[0] not in {r["video_id"] for r in _annotations(root)}
    # every other video has its mask folder
    assert set(_annotated(root)) == {r[0] for r in _videoset(root)} - set(missed)


def test_annotation_file_header_rows_and_exactly_one_malformed_row(sets):
    root, summary = sets["a"]
    with open(root / "text_annotations" / "a2d_annotation.txt") as f:
        assert f.readline() == "video_id,instance_id,query,short_query\n"
    rows = _annotations(root)
    malformed = [r for r in rows if not r["instance_id"].isdigit()]
    assert len(malformed) == 1 and malformed[0]["instance_id"] == MALFORMED_INSTANCE_ID == "1 (copy)"
    original = [r for r in rows if r["video_id"] == malformed[0]["video_id"] and r["instance_id"] == "1"]
    assert len(original) == 1 and original[0]["query"] == malformed[0]["query"]
    valid = _valid_rows(root)
    assert len(valid) == summary["expressions"] == len(rows) - 1
    by_video: dict[str, list[dict]] = {}
    for r in valid:
        by_video.setdefault(r["video_id"], []).append(r)
        assert r["query"].startswith(r["short_query"] + " ")  # the short one is the subject phrase
        assert r["query"] == r["query"].lower()
    for vid, video_rows in by_video.items():
        ids = sorted(int(r["instance_id"]) for r in video_rows)
        assert 2 <= len(ids) <= 4 and ids == list(range(len(ids)))
        assert len({r["query"] for r in video_rows}) == len(video_rows)  # long expressions identify


def test_h5_keys_and_transposed_shapes(sets):
    root, summary = sets["a"]
    count = 0
    for vid, frames in _annotated(root).items():
        rows = [r for r in _valid_rows(root) if r["video_id"] == vid]
        for frame, path in frames.items():
            instances, masks, boxes, info = _read_h5(path)
            count += 1
            assert info["keys"] == {"instance", "reMask", "reBBox"} and info["ids_ndim"] == 1
            assert info["mask_dtype"] == np.uint8
            expected = (WIDTH, HEIGHT) if len(instances) == 1 else (len(instances), WIDTH, HEIGHT)
            assert info["mask_shape"] == expected
            assert boxes.shape == (4, len(instances))
            assert set(instances) <= {int(r["instance_id"]) for r in rows}
            assert set(np.unique(masks)) <= {0, 1}
            assert masks.sum(axis=0).max() == 1  # visible pixels: no pixel belongs to two instances
            for mask, box in zip(masks, boxes.T):
                ys, xs = np.nonzero(mask)
                assert len(ys) > 0  # only visible instances are listed
                assert tuple(box) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert count == summary["annotated_frames"] == (VIDEOS - 1) * 3


def test_single_instance_frame_is_stored_as_w_by_h(tmp_path):
    labels = np.full((6, 10), -1, dtype=np.int16)
    labels[1:4, 2:7] = 3  # instance 3 visible, instances 0 and 5 hidden
    listed, ids = _write_h5(tmp_path / "00001.h5", labels, [0, 3, 5])
    instances, masks, boxes, info = _read_h5(tmp_path / "00001.h5")
    assert (listed, ids, instances) == (1, [3], [3])
    assert info["mask_shape"] == (10, 6)
    np.testing.assert_array_equal(masks[0], (labels == 3).astype(np.uint8))
    np.testing.assert_array_equal(boxes[:, 0], [2, 1, 6, 3])


def test_same_seed_same_set_other_seed_other_set(sets):
    (root, summary), (again, summary_again), (other, _) = sets["a"], sets["a_again"], sets["b"]
    assert summary == summary_again
    for name in ("text_annotations/a2d_annotation.txt", "text_annotations/a2d_missed_videos.txt",
                 "Release/videoset.csv"):
        assert (root / name).read_bytes() == (again / name).read_bytes()
        assert (root / name).read_bytes() != (other / name).read_bytes()
    annotated, annotated_again = _annotated(root), _annotated(again)
    assert {v: list(f) for v, f in annotated.items()} == {v: list(f) for v, f in annotated_again.items()}
    for vid, frames in annotated.items():
        for frame, path in frames.items():
            ids, masks, boxes, _ = _read_h5(path)
            ids2, masks2, boxes2, _ = _read_h5(annotated_again[vid][frame])
            assert ids == ids2
            np.testing.assert_array_equal(masks, masks2)
            np.testing.assert_array_equal(boxes, boxes2)
        for a, b in zip(_frames(root, vid), _frames(again, vid)):
            np.testing.assert_array_equal(a, b)
    assert not {r[0] for r in _videoset(root)} & {r[0] for r in _videoset(other)}


def test_look_alikes_share_the_short_expression_but_not_the_long_one(sets):
    root, summary = sets["a"]
    groups = {}
    for r in _valid_rows(root):
        groups.setdefault((r["video_id"], r["short_query"]), []).append(r)
    shared = {key: rows for key, rows in groups.items() if len(rows) > 1}
    assert len(shared) == summary["shared_short_groups"] >= 1
    annotated = _annotated(root)
    for (vid, _), rows in shared.items():
        assert len({r["query"] for r in rows}) == len(rows)
        ids = {int(r["instance_id"]) for r in rows}
        # in some frame both are visible: the merged short ground truth is larger than either mask
        together = [_read_h5(p) for p in annotated[vid].values() if ids <= set(_read_h5(p)[0])]
        assert together
        instances, masks, _, _ = together[0]
        areas = [int(masks[instances.index(i)].sum()) for i in ids]
        merged = np.any([masks[instances.index(i)] for i in ids], axis=0).sum()
        assert merged == sum(areas) > max(areas)


def test_masks_cover_the_visible_object_of_the_named_colour(sets):
    """In the decoded frame, mask pixels have the colour the expression names; the ring just outside
    all masks is the grey background."""
    root, _ = sets["a"]
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float64) * MEAN_SHADE
    checked = 0
    kernel = np.ones((3, 3), np.uint8)
    for vid, frames in _annotated(root).items():
        colour_of = {int(r["instance_id"]): next(w for w in r["short_query"].split() if w in COLOURS)
                     for r in _valid_rows(root) if r["video_id"] == vid}
        decoded = _frames(root, vid)
        for frame, path in frames.items():
            image = decoded[frame - 1].astype(np.float64)
            instances, masks, _, _ = _read_h5(path)
            for instance_id, mask in zip(instances, masks):
                core = cv2.erode(mask, kernel, iterations=2).astype(bool)  # away from blurred edges
                if core.sum() < 10:
                    continue
                mean = image[core].mean(axis=0)
                assert names[np.argmin(np.linalg.norm(palette - mean, axis=1))] == colour_of[instance_id]
                checked += 1
            union = masks.any(axis=0).astype(np.uint8)
            ring = cv2.dilate(union, kernel, iterations=4).astype(bool) & ~cv2.dilate(union, kernel, iterations=2).astype(bool)
            saturation = image.max(axis=2) - image.min(axis=2)
            assert saturation[ring].mean() < 45 < saturation[union.astype(bool)].mean()
    assert checked >= 20


def test_sideways_motion_matches_the_words_left_and_right(sets):
    """Training flips frames and swaps "left"/"right" in the text: the words must mean x motion."""
    checked = 0
    for root, _ in sets.values():
        annotated = _annotated(root)
        for r in _valid_rows(root):
            action = re.sub(r"^" + re.escape(r["short_query"]), "", r["query"])
            direction = [d for d in ("left", "right") if re.search(rf"(moving|going|sliding|moves|slides|goes)( to the)? {d}", action)]
            if not direction or r["video_id"] not in annotated:
                continue
            centres = []
            for frame, path in sorted(annotated[r["video_id"]].items()):
                instances, masks, _, _ = _read_h5(path)
                if int(r["instance_id"]) in instances:
                    centres.append(np.nonzero(masks[instances.index(int(r["instance_id"]))])[1].mean())
            if len(centres) >= 2:
                assert (centres[-1] - centres[0] < 0) == (direction[0] == "left"), r
                checked += 1
    assert checked >= 2


def test_objects_occlude_each_other_somewhere(sets):
    root, summary = sets["a"]
    assert summary["occluded_masks"] > 0
    touching = 0
    for frames in _annotated(root).values():
        for path in frames.values():
            _, masks, _, _ = _read_h5(path)
            for i in range(len(masks)):
                grown = cv2.dilate(masks[i], np.ones((3, 3), np.uint8)).astype(bool)
                touching += sum(bool((grown & masks[j].astype(bool)).any()) for j in range(len(masks)) if j != i)
    assert touching > 0  # visible regions that meet: one object lies over another
    # over both seeds some small object is fully hidden behind a big one in an annotated frame
    assert sets["a"][1]["hidden_instances"] + sets["b"][1]["hidden_instances"] > 0


def test_an_annotated_frame_near_each_end_exercises_window_clamping(sets):
    root, _ = sets["a"]
    frames = {f for video in _annotated(root).values() for f in video}
    assert 2 in frames and FRAMES - 1 in frames
    assert min(frames) >= 2 and max(frames) <= FRAMES - 1


def test_rewrite_into_the_same_root_leaves_no_stale_files(tmp_path):
    write_synthetic_a2d(tmp_path, seed=5, **SETTINGS)
    summary = write_synthetic_a2d(tmp_path, seed=6, **{**SETTINGS, "videos": 3}, overwrite=True)
    ids = {r[0] for r in _videoset(tmp_path)}
    assert len(ids) == 3
    assert {p.stem for p in (tmp_path / "Release" / "clips320H").iterdir()} == ids
    assert set(_annotated(tmp_path)) == ids - {summary["missed_video"]}
    assert not list(tmp_path.rglob("*.tmp*"))


def test_unusable_arguments_say_why():
    with pytest.raises(ValueError, match="videos"):
        write_synthetic_a2d(Path("unused"), videos=2, progress=False)
    with pytest.raises(ValueError, match="even"):
        write_synthetic_a2d(Path("unused"), height=63, progress=False)
    with pytest.raises(ValueError, match="annotated_per_video"):
        write_synthetic_a2d(Path("unused"), frames=12, annotated_per_video=20, progress=False)
