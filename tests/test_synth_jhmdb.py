"""`losh synth --layout jhmdb`: the synthetic scenes in the JHMDB-Sentences layout, read back as MTTR reads it
(Rename_Images/<class>/<video>/%05d.png, puppet_mask/<class>/<video>/puppet_mask.mat, jhmdb_annotation.txt)."""
import csv
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from losh.pipeline.synth_layouts import JHMDB_CLASSES, JHMDB_SHORT_MASKS, jhmdb_puppet, write_synthetic_jhmdb
from losh.pipeline.synth_layouts import scenes as layout_scenes

VIDEOS, HEIGHT, WIDTH, FRAMES = 4, 64, 88, 10
SETTINGS = dict(videos=VIDEOS, height=HEIGHT, width=WIDTH, frames=FRAMES, progress=False)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("jhmdb")
    return {name: (base / name, write_synthetic_jhmdb(base / name, seed=seed, **SETTINGS))
            for name, seed in (("a", 0), ("a_again", 0), ("b", 1))}


@pytest.fixture(scope="module")
def scenes() -> list:
    return [video for _, video in layout_scenes(VIDEOS, 0, HEIGHT, WIDTH, FRAMES)]


def _rows(root: Path) -> list[dict]:
    with open(root / "jhmdb_annotation.txt", newline="") as f:
        return list(csv.DictReader(f))


def _folders(root: Path, tree: str) -> dict[str, Path]:
    """video_id -> its folder, found as MTTR finds it (ROOT/<tree>/*/*, keyed by the folder name)."""
    return {p.name: p for p in sorted((root / tree).glob("*/*"))}


def _part_mask(root: Path, video_id: str) -> np.ndarray:
    return scipy.io.loadmat(_folders(root, "puppet_mask")[video_id] / "puppet_mask.mat")["part_mask"]


def test_annotation_csv_has_the_header_and_one_row_per_video_with_the_puppets_long_expression(sets, scenes):
    root, summary = sets["a"]
    text = (root / "jhmdb_annotation.txt").read_text()
    assert text.splitlines()[0] == "video_id,query"
    rows = _rows(root)
    assert [r["video_id"] for r in rows] == [v.video_id for v in scenes]
    for row, video in zip(rows, scenes):
        puppet = summary["puppets"][video.video_id]
        long_expressions = {i: q for i, q, _ in video.expressions}
        assert row["query"] == long_expressions[puppet]
        assert row["query"] != next(s for i, _, s in video.expressions if i == puppet)  # the long one


def test_frames_are_every_frame_as_1_based_pngs_under_the_puppets_action_class(sets, scenes):
    root, summary = sets["a"]
    frames_dirs, masks_dirs = _folders(root, "Rename_Images"), _folders(root, "puppet_mask")
    assert set(frames_dirs) == set(masks_dirs) == {v.video_id for v in scenes}
    for video in scenes:
        folder = frames_dirs[video.video_id]
        action_class = folder.parent.name
        assert re.fullmatch(r"[a-z_]+", action_class)
        puppet = next(i for i in video.instances if i.instance_id == summary["puppets"][video.video_id])
        assert action_class == JHMDB_CLASSES[puppet.action] == summary["classes"][video.video_id]
        assert masks_dirs[video.video_id].parent.name == action_class
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"{t:05d}.png" for t in range(1, FRAMES + 1)]
        with Image.open(folder / "00001.png") as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (WIDTH, HEIGHT)


def test_part_mask_is_h_by_w_by_t_uint8_0_1_and_the_puppets_rendered_mask(sets, scenes):
    from losh.pipeline.synth_render import render as _render

    root, summary = sets["a"]
    for video in scenes:
        masks = _part_mask(root, video.video_id)
        n_masks = FRAMES - JHMDB_SHORT_MASKS if video is scenes[-1] else FRAMES
        assert masks.shape == (HEIGHT, WIDTH, n_masks) and masks.dtype == np.uint8
        assert set(np.unique(masks).tolist()) <= {0, 1}
        puppet = summary["puppets"][video.video_id]
        frames_dir = _folders(root, "Rename_Images")[video.video_id]
        for t in (0, n_masks // 2, n_masks - 1):
            image, labels, _ = _render(video, t, HEIGHT, WIDTH)
            np.testing.assert_array_equal(masks[:, :, t], (labels == puppet).astype(np.uint8))
            # PNG is lossless: the frame is the rendered scene, distractors included
            np.testing.assert_array_equal(np.asarray(Image.open(frames_dir / f"{t + 1:05d}.png")), image)
        # the other instances appear in the frames but in no mask
        others = {i.instance_id for i in video.instances} - {puppet}
        seen = set().union(*(np.unique(_render(video, t, HEIGHT, WIDTH, with_image=False)[1]).tolist()
                             for t in range(FRAMES)))
        assert others and others <= seen
        assert masks.reshape(-1, n_masks).any(axis=0).sum() >= n_masks - 1  # the actor is (nearly) always seen


def test_the_last_video_has_fewer_masks_than_frames_and_an_mttr_style_read_drops_the_rest(sets, scenes):
    root, summary = sets["a"]
    assert summary["short_mask_video"] == scenes[-1].video_id
    assert summary["short_mask_frames"] == FRAMES - JHMDB_SHORT_MASKS
    assert summary["masked_frames"] == VIDEOS * FRAMES - JHMDB_SHORT_MASKS
    frames_dirs = _folders(root, "Rename_Images")
    for row in _rows(root):
        pngs = sorted(frames_dirs[row["video_id"]].glob("*.png"))
        total_masks = _part_mask(root, row["video_id"]).shape[2]
        usable = pngs[:total_masks]                                    # as MTTR: frames past the masks go
        short = row["video_id"] == summary["short_mask_video"]
        assert len(pngs) == FRAMES
        assert len(usable) == (FRAMES - JHMDB_SHORT_MASKS if short else FRAMES) >= 3  # MTTR samples 3


def test_same_seed_same_bytes_and_arrays_other_seed_other_set(sets):
    (a, _), (again, _), (b, _) = sets["a"], sets["a_again"], sets["b"]
    assert (a / "jhmdb_annotation.txt").read_bytes() == (again / "jhmdb_annotation.txt").read_bytes()
    assert (a / "jhmdb_annotation.txt").read_bytes() != (b / "jhmdb_annotation.txt").read_bytes()
    for video_id, folder in _folders(a, "Rename_Images").items():
        np.testing.assert_array_equal(_part_mask(a, video_id), _part_mask(again, video_id))
        other = _folders(again, "Rename_Images")[video_id]
        assert other.relative_to(again) == folder.relative_to(a)
        for name in ("00001.png", f"{FRAMES:05d}.png"):
            assert (folder / name).read_bytes() == (other / name).read_bytes()


def test_rewrite_into_the_same_root_leaves_no_stale_files(tmp_path):
    write_synthetic_jhmdb(tmp_path, seed=5, **{**SETTINGS, "frames": 12})
    summary = write_synthetic_jhmdb(tmp_path, seed=6, **{**SETTINGS, "videos": 2}, overwrite=True)
    ids = set(summary["puppets"])
    for tree in ("Rename_Images", "puppet_mask"):
        assert set(_folders(tmp_path, tree)) == ids
        assert all(any(d.iterdir()) for d in (tmp_path / tree).iterdir())  # no empty class folders
    assert all(len(list(d.glob("*.png"))) == FRAMES for d in _folders(tmp_path, "Rename_Images").values())
    assert {r["video_id"] for r in _rows(tmp_path)} == ids


def test_puppet_is_the_instance_seen_in_most_frames_lowest_id_on_ties():
    empty = np.full((4, 4), -1)
    one, both = empty.copy(), empty.copy()
    one[0, 0] = 1
    both[0, 0], both[1, 1] = 0, 1
    assert jhmdb_puppet([one, both], [0, 1]) == 1
    assert jhmdb_puppet([both, both], [0, 1]) == 0
    assert jhmdb_puppet([empty], [2, 1]) == 1


def test_unusable_arguments_say_why():
    with pytest.raises(ValueError, match="videos"):
        write_synthetic_jhmdb(Path("unused"), videos=0, progress=False)
    with pytest.raises(ValueError, match="frames"):
        write_synthetic_jhmdb(Path("unused"), frames=4, progress=False)


def test_losh_synth_layout_jhmdb(tmp_path):
    from typer.testing import CliRunner

    from losh.cli.main import app

    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--layout", "jhmdb", "--videos", "3", "--height", "64",
                                      "--width", "88", "--frames", "8"])
    assert result.exit_code == 0, result.output
    assert '"short_mask_video"' in result.output
    assert len(_rows(tmp_path)) == 3 and len(_folders(tmp_path, "puppet_mask")) == 3
