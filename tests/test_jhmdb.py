"""JHMDB-Sentences: MTTR's protocol file read, the synthetic layout prepared (3 frames a video, windows of 8
clamped to the frames with masks, the list written in MTTR's format and read back to the same samples),
broken inputs reported by id, and an A2D-trained checkpoint scored with the A2D protocol at the original size."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat
from typer.testing import CliRunner

from losh.cli.main import app
from losh.evaluation.evaluate import evaluate_checkpoint
from losh.evaluation.ground_truth import GroundTruth
from losh.pipeline.datasets.jhmdb import METADATA_FILE, read_samples_metadata
from losh.pipeline.prepare import PrepareSettings, prepare_dataset
from losh.pipeline.synth_layouts import write_synthetic_jhmdb
from losh.schemas.prepared_reader import PreparedDataset
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.loop import train

SHARED = Path(__file__).resolve().parents[2] / "shared"
SETTINGS = PrepareSettings(window=8, short_side=96, max_long_side=132)   # 64 x 88 frames stored larger


@pytest.fixture(scope="module")
def jhmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("jhmdb") / "raw"
    summary = write_synthetic_jhmdb(root, videos=5, seed=4, height=64, width=88, frames=12, progress=False)
    prep = root.parent / "prep"
    manifest = prepare_dataset("jhmdb", root, prep, settings=SETTINGS, workers=1, progress=False, seed=7)
    return root, prep, manifest, summary


def test_mttr_protocol_file_is_read_as_published():
    protocol = read_samples_metadata(SHARED / "data" / "jhmdb_sentences_samples_metadata.json")
    assert len(protocol) == 928 and all(len(entries) == 3 for entries in protocol.values())
    frame, n_frames, query = protocol["100_pullups_pullup_f_nm_np1_fr_med_1"][0]
    assert (frame, n_frames, query) == (2, 40, "man in black pulling up")
    assert all(1 <= f <= n for entries in protocol.values() for f, n, _ in entries)


def test_three_frames_a_video_with_windows_clamped_to_the_masked_frames(jhmdb):
    root, prep, manifest, summary = jhmdb
    assert manifest["dataset"] == "jhmdb" and manifest["eval_split"] == "test"
    assert manifest["splits"] == {"test": {"kind": "window", "masks": True, "samples": 15}}
    data = PreparedDataset(prep)
    by_video: dict[str, list] = {}
    for r in data.records:
        by_video.setdefault(r.video_id, []).append(r)
    assert len(by_video) == 5 and all(len(rs) == 3 for rs in by_video.values())
    short = summary["short_mask_video"]
    assert {r.video_frames for r in by_video[short]} == {summary["short_mask_frames"]}   # frames past the masks dropped
    problems = json.loads((prep / "report.json").read_text())["problems"]
    assert any(p["video_id"] == short and "frames past the mask count dropped" in p["reason"] for p in problems)
    csv_rows = dict(line.split(",", 1) for line in (root / "jhmdb_annotation.txt").read_text().splitlines()[1:])
    for r in data.records:
        assert r.long == csv_rows[r.video_id] and r.instance_id == 1 and r.targets == [4]
        assert r.window == [min(max(i, 1), r.video_frames) for i in range(r.frame - 4, r.frame + 4)]   # MTTR's
        mat = loadmat(next((root / "puppet_mask").glob(f"*/{r.video_id}/puppet_mask.mat")))["part_mask"]
        # scored at the original size: the .mat mask itself (the stored one is resized)
        sample = data.read(r)
        assert sample.long_mask.shape == (96, 132)
        truth = GroundTruth(data, "original").long_mask(r, sample.long_mask)
        assert np.array_equal(truth, mat[:, :, r.frame - 1] > 0)


def test_the_written_protocol_reproduces_the_samples(jhmdb, tmp_path):
    root, prep, _, _ = jhmdb
    written = json.loads((prep / METADATA_FILE).read_text())
    assert len(written) == 15 and all(len(e) == 5 and e[1].startswith("./jhmdb_sentences/Rename_Images/")
                                      for e in written)
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["prepare-data", "--dataset", "jhmdb", "--root", str(root), "--out", str(again),
                                      "--samples-metadata", str(prep / METADATA_FILE), "--short-side", "96",
                                      "--max-long-side", "132", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (again / "samples.jsonl").read_text() == (prep / "samples.jsonl").read_text()


def test_broken_videos_are_reported_by_id_and_the_rest_prepared(jhmdb, tmp_path):
    root, prep, _, _ = jhmdb
    broken = tmp_path / "raw"
    shutil.copytree(root, broken)
    videos = sorted(p.name for p in (broken / "Rename_Images").glob("*/*"))
    no_mat, no_frames = videos[0], videos[1]
    next((broken / "puppet_mask").glob(f"*/{no_mat}/puppet_mask.mat")).unlink()
    shutil.rmtree(next((broken / "Rename_Images").glob(f"*/{no_frames}")))
    metadata = json.loads((prep / METADATA_FILE).read_text())
    metadata.append(["video_not_here", "./jhmdb_sentences/Rename_Images/x/video_not_here/00001.png", "m.mat", 9, "a man"])
    (tmp_path / "protocol.json").write_text(json.dumps(metadata))
    out = tmp_path / "prep"
    manifest = prepare_dataset("jhmdb", broken, out, settings=SETTINGS, workers=1, progress=False,
                               samples_metadata=tmp_path / "protocol.json")
    reasons = {p["video_id"]: p["reason"] for p in json.loads((out / "report.json").read_text())["problems"]}
    assert "missing puppet_mask" in reasons[no_mat] and "no Rename_Images" in reasons[no_frames]
    assert "not a readable video of this root" in reasons["video_not_here"]
    assert manifest["counts"]["videos"] == 3 and manifest["counts"]["samples"] == 9


def test_an_a2d_model_is_scored_on_jhmdb_with_the_a2d_protocol(jhmdb, prepared, tmp_path):
    _, prep, _, _ = jhmdb
    train(prepared, get_config("tiny:wo-fbc"), tmp_path / "run",
          TrainSettings(epochs=1, batch_size=2, num_workers=0, max_steps=2, amp="off", lr_milestones=(1,)),
          progress=False)
    report = evaluate_checkpoint(prep, tmp_path / "run/checkpoints/last.pt", progress=False, device="cpu")
    assert report["split"] == "test" and report["samples"] == 15 and report["resolution"] == "original"
    assert {"overall_iou", "mean_iou", "map", "precision@0.5", "precision@0.9"} <= set(report)
    assert 0 <= report["mean_iou"] <= 1
