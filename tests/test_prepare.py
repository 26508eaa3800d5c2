import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from losh.cli.main import app
from losh.pipeline.datasets.a2d import list_annotated_frames, read_a2d, read_frame_annotation
from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.pipeline.video import decode_frames, resize_masks
from losh.schemas.prepared import SchemaError
from losh.schemas.prepared_reader import PreparedDataset

SETTINGS = PrepareSettings(window=8, short_side=64, max_long_side=88)


def visible_shards(folder: Path) -> list[Path]:
    """The shards a reader sees: a writer's hidden temporary (`.NAME.tmp-PID-x.h5`) also ends in .h5."""
    return [p for p in folder.glob("*.h5") if not p.name.startswith(".")]


def prepare(root, out, **kw):
    kw.setdefault("short_source", "manual")
    kw.setdefault("settings", SETTINGS)
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return prepare_a2d(root, out, **kw)


def test_synthetic_layout_reads_back_with_the_a2d_reader(synth_root):
    raw = read_a2d(synth_root)
    assert len(raw.videos) == 6
    assert {v.split for v in raw.videos.values()} == {"train", "test"}
    assert len(raw.missed) == 1 and raw.missed <= set(raw.videos)
    assert raw.has_short_query
    assert [p.instance_id for p in raw.problems] == ["1 (copy)"]   # the malformed row, reported
    vid = sorted(set(raw.videos) - raw.missed)[0]
    frames = list_annotated_frames(raw.annotation_dir(vid))
    assert len(frames) == raw.videos[vid].annotated_frames
    ids, masks = read_frame_annotation(raw.annotation_dir(vid) / f"{frames[0]:05d}.h5")
    assert masks.shape == (len(ids), raw.videos[vid].height, raw.videos[vid].width)   # un-transposed
    assert all(m.any() for m in masks)
    decoded, n, _ = decode_frames(raw.video_path(vid), {0})
    assert decoded[0].shape == (raw.videos[vid].height, raw.videos[vid].width, 3)


def test_prepare_writes_samples_windows_and_merged_short_masks(synth_root, tmp_path):
    manifest = prepare(synth_root, tmp_path / "prep")
    raw = read_a2d(synth_root)
    counts = manifest["counts"]
    assert counts["videos_missed_skipped"] == 1
    assert counts["samples"] == counts["samples_train"] + counts["samples_test"] > 0
    assert counts["broken"] == 1   # only the malformed row
    ds = PreparedDataset(tmp_path / "prep")
    assert len(ds) == counts["samples"]
    assert counts["merged_short_masks"] == sum(r.short_merged for r in ds.records) > 0
    for record in ds.records:
        sample = ds.read(record)
        assert sample.frames.shape == (8, 64, 88, 3) and sample.frames.dtype == np.uint8
        assert sample.annotated_index == 4
        ids, masks = read_frame_annotation(raw.annotation_dir(record.video_id) / f"{record.frame:05d}.h5")
        expected_long = resize_masks(masks, (64, 88))[list(ids).index(record.instance_id)]
        assert (sample.long_mask == expected_long).all()
        members = np.isin(ids, record.short_instance_ids)
        expected_short = resize_masks(masks[members], (64, 88)).any(0)
        assert (sample.short_mask == expected_short).all()
        assert (sample.short_mask | sample.long_mask == sample.short_mask).all()   # short contains long
        if record.short_merged:
            assert sample.short_mask.sum() > sample.long_mask.sum()
    # the stored frame of the window centre is the decoded video frame (up to JPEG loss)
    r = ds.records[0]
    decoded, _, _ = decode_frames(raw.video_path(r.video_id), {r.frame - 1})
    centre = ds.read(r).frames[4].astype(float)
    assert np.abs(centre - decoded[r.frame - 1][:, :, ::-1]).mean() < 6.0


def test_result_does_not_depend_on_the_number_of_workers(synth_root, tmp_path):
    prepare(synth_root, tmp_path / "one", workers=1)
    prepare(synth_root, tmp_path / "two", workers=2)
    assert (tmp_path / "one/samples.jsonl").read_bytes() == (tmp_path / "two/samples.jsonl").read_bytes()
    for shard in (tmp_path / "one/shards").glob("*.h5"):
        with h5py.File(shard) as a, h5py.File(tmp_path / "two/shards" / shard.name) as b:
            assert (a["frame_numbers"][()] == b["frame_numbers"][()]).all()
            assert all((a["frames"][i] == b["frames"][i]).all() for i in range(len(a["frames"])))


def test_broken_inputs_are_reported_and_the_rest_prepared(raw_copy, tmp_path):
    raw = read_a2d(raw_copy)
    good = prepare(raw_copy, tmp_path / "good")["counts"]["samples"]
    videos = sorted(set(raw.videos) - raw.missed)
    bad_video, bad_h5_video, empty_video = videos[0], videos[1], videos[2]
    raw.video_path(bad_video).write_bytes(b"\x00not an mp4" * 100)           # corrupted mp4
    first_h5 = sorted(raw.annotation_dir(bad_h5_video).glob("*.h5"))[0]
    first_h5.unlink()                                                         # missing .h5
    ann = raw_copy / "text_annotations/a2d_annotation.txt"
    lines = ann.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(empty_video + ","))
    cols = lines[i].split(",")
    lines[i] = ",".join([cols[0], cols[1], "", cols[3]])                     # empty expression
    ann.write_text("\n".join(lines) + "\n")

    manifest = prepare(raw_copy, tmp_path / "prep")
    report = json.loads((tmp_path / "prep/report.json").read_text())["problems"]
    reasons = {(p["video_id"], p["reason"].split(":")[0]) for p in report}
    assert (bad_video, "unreadable video") in reasons
    assert (bad_h5_video, "missing mask files") in reasons
    assert (empty_video, "empty expression") in reasons
    ds = PreparedDataset(tmp_path / "prep")
    assert bad_video not in {r.video_id for r in ds.records}
    assert bad_h5_video in {r.video_id for r in ds.records}                  # its other frames remain
    assert 0 < manifest["counts"]["samples"] < good


def test_cli_exit_codes_and_summary(synth_root, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["prepare-data", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "not an A2D-Sentences root" in result.output
    result = runner.invoke(app, ["prepare-data", "--root", str(synth_root), "--out", str(tmp_path / "p"),
                                 "--short-text", "manual", "--short-side", "64", "--max-long-side", "88",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "samples with a merged short mask" in result.output


def test_reader_refuses_another_version_and_malformed_records(synth_root, tmp_path):
    prep = tmp_path / "prep"
    prepare(synth_root, prep)
    manifest = json.loads((prep / "manifest.json").read_text())
    (prep / "manifest.json").write_text(json.dumps({**manifest, "version": 0}))
    with pytest.raises(SchemaError, match="version 0"):
        PreparedDataset(prep)
    (prep / "manifest.json").write_text(json.dumps(manifest))
    lines = (prep / "samples.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"split": "', '"split": "x')
    (prep / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SchemaError, match="samples.jsonl:1"):
        PreparedDataset(prep)


SLOW_RUN = """
import sys, time
import losh.pipeline.prepare as p
from pathlib import Path
original = p.prepare_video
def slow(job):
    result = original(job)
    time.sleep(0.4)
    return result
p.prepare_video = slow
p.prepare_a2d(Path(sys.argv[1]), Path(sys.argv[2]), short_source="manual", workers=1, progress=False,
              settings=p.PrepareSettings(window=8, short_side=64, max_long_side=88))
"""


def test_killed_run_leaves_no_corrupt_shard_and_resumes(synth_root, tmp_path):
    prep = tmp_path / "prep"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(synth_root), str(prep)],
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.time() + 60
    while time.time() < deadline and len(visible_shards(prep / "shards")) < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shards = visible_shards(prep / "shards")
    assert 2 <= len(shards) < 5 and not (prep / "manifest.json").exists()
    for shard in shards:   # every visible shard is complete
        with h5py.File(shard) as f:
            assert f.attrs["records"] and "frames" in f
    manifest = prepare(synth_root, prep)
    assert manifest["counts"]["videos_resumed"] == len(shards)
    prepare(synth_root, tmp_path / "fresh")
    assert (prep / "samples.jsonl").read_bytes() == (tmp_path / "fresh/samples.jsonl").read_bytes()
    # changed settings are never mixed with old shards: refused, or with overwrite everything is recomputed
    other = PrepareSettings(window=6, short_side=64, max_long_side=88)
    with pytest.raises(ValueError, match="--window 8 -> 6"):
        prepare(synth_root, prep, settings=other)
    changed = prepare(synth_root, prep, settings=other, overwrite=True)
    assert changed["counts"]["videos_resumed"] == 0
    assert all(len(r.window) == 6 for r in PreparedDataset(prep).records)
