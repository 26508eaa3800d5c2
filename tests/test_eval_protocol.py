"""The evaluation protocol as MTTR's: batch-size and worker independence, float32 by default, scoring at
the original video size, the predictions folder scoring the same masks the same way."""
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.data.size_batches import size_grouped_batches
from losh.evaluation.evaluate import evaluate_checkpoint
from losh.evaluation.ground_truth import GroundTruth
from losh.evaluation.predictions import score_predictions
from losh.inference.video_inference import query_masks
from losh.pipeline.datasets.a2d import read_frame_annotation
from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.pipeline.synth import write_synthetic_a2d
from losh.schemas.prepared_reader import PreparedDataset
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.loop import train

IOU_KEYS = ("overall_iou", "mean_iou", "precision@0.5", "precision@0.6", "precision@0.7", "precision@0.8",
            "precision@0.9", "j", "f", "jf", "num_images")


def _merge_raw(dst, src):
    """Add the videos of raw root `src` to raw root `dst` (A2D layout: clips, mask folders, CSV rows)."""
    for clip in (src / "Release/clips320H").iterdir():
        shutil.copy(clip, dst / "Release/clips320H" / clip.name)
    masks = "text_annotations/a2d_annotation_with_instances"
    for video in (src / masks).iterdir():
        shutil.copytree(video, dst / masks / video.name)
    for name, skip in (("Release/videoset.csv", 0), ("text_annotations/a2d_annotation.txt", 1),
                       ("text_annotations/a2d_missed_videos.txt", 0)):
        lines = (src / name).read_text().splitlines()[skip:]
        text = (dst / name).read_text()
        (dst / name).write_text(text + ("" if text.endswith("\n") else "\n") + "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def mixed_raw(synth_root, tmp_path_factory):
    """Videos of two widths in one raw root: 64 x 88 (the shared synthetic set) and 64 x 64."""
    root = tmp_path_factory.mktemp("mixed") / "raw"
    shutil.copytree(synth_root, root)
    narrow = tmp_path_factory.mktemp("narrow") / "raw"
    write_synthetic_a2d(narrow, videos=4, seed=11, height=64, width=64, frames=16, annotated_per_video=2,
                        progress=False)
    _merge_raw(root, narrow)
    return root


@pytest.fixture(scope="module")
def mixed_prep(mixed_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed_prep") / "prep"
    prepare_a2d(mixed_raw, out, short_source="manual", settings=PrepareSettings(window=8, short_side=64,
                max_long_side=88), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(mixed_prep, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    settings = TrainSettings(epochs=1, batch_size=2, num_workers=0, log_every_steps=1, amp="bf16",
                             lr_milestones=(1,), deterministic=True, max_steps=3)
    train(mixed_prep, get_config("tiny:wo-fbc"), run, settings, progress=False)
    return run / "checkpoints/last.pt"


def test_size_grouped_batches_hold_one_size_and_every_index_once():
    sizes = [(64, 88), (64, 64), (64, 88), (64, 88), (64, 64), (64, 88)]
    batches = size_grouped_batches(sizes, 3)
    assert batches == [[0, 2, 3], [5], [1, 4]]
    assert size_grouped_batches(sizes, 1) == [[0], [2], [3], [5], [1], [4]]
    with pytest.raises(ValueError, match="batch_size"):
        size_grouped_batches(sizes, 0)


def test_metrics_do_not_depend_on_batch_size_or_workers(mixed_prep, checkpoint, tmp_path):
    data = PreparedDataset(mixed_prep, "test")
    assert len({tuple(r.size) for r in data.records}) == 2, "the fixture must mix frame sizes"
    reports, scores = {}, {}
    for name, batch_size, workers in (("b1", 1, 0), ("b3", 3, 0), ("b3w2", 3, 2)):
        reports[name] = evaluate_checkpoint(mixed_prep, checkpoint, batch_size=batch_size, num_workers=workers,
                                            save_predictions=tmp_path / name, progress=False, device="cpu")
        scores[name] = json.loads((tmp_path / name / "predictions.json").read_text())["scores"]
    assert reports["b1"]["num_images"] == len(data.records)
    assert 0 < reports["b1"]["mean_iou"] < 1     # the masks are not trivially empty or perfect
    for name in ("b3", "b3w2"):
        for key in IOU_KEYS:
            assert reports[name][key] == reports["b1"][key], (name, key)
        assert reports[name]["map"] == pytest.approx(reports["b1"]["map"], abs=1e-6)
        assert scores[name].keys() == scores["b1"].keys()
        for sample_id, score in scores["b1"].items():
            assert scores[name][sample_id] == pytest.approx(score, abs=1e-6)
            record = next(r for r in data.records if r.sample_id == sample_id)
            path = f"{record.video_id}/{record.instance_id}/{record.frame:05d}.png"
            assert (tmp_path / name / path).read_bytes() == (tmp_path / "b1" / path).read_bytes(), (name, path)


def test_evaluation_runs_in_float32_unless_asked_whatever_the_training_used(mixed_prep, checkpoint, tmp_path,
                                                                           monkeypatch):
    import losh.evaluation.evaluate as evaluate_module
    assert torch.load(checkpoint, weights_only=False)["train_settings"]["amp"] == "bf16"
    asked = []
    real = evaluate_module.autocast_for
    monkeypatch.setattr(evaluate_module, "autocast_for", lambda dev, amp: asked.append(amp) or real(dev, amp))
    report = evaluate_checkpoint(mixed_prep, checkpoint, progress=False, device="cpu")
    assert set(asked) == {"off"} and report["amp"] == "off" and report["precision"] == "float32"
    asked.clear()
    result = CliRunner().invoke(app, ["evaluate", "--data", str(mixed_prep), "--checkpoint", str(checkpoint),
                                      "--amp", "bf16", "--out", str(tmp_path / "m.json"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert set(asked) == {"bf16"} and saved["amp"] == "bf16" and saved["precision"] == "float32"  # CPU: no autocast
    result = CliRunner().invoke(app, ["evaluate", "--data", str(mixed_prep), "--checkpoint", str(checkpoint),
                                      "--amp", "fp16"])
    assert result.exit_code == 2 and "--amp must be off or bf16" in result.output


def test_the_checkpoint_and_its_saved_predictions_score_the_same(mixed_prep, checkpoint, tmp_path):
    report = evaluate_checkpoint(mixed_prep, checkpoint, batch_size=3, save_predictions=tmp_path / "pred",
                                 progress=False, device="cpu")
    rescored, missing = score_predictions(mixed_prep, tmp_path / "pred", progress=False)
    assert missing == [] and rescored["resolution"] == "original"
    for key in IOU_KEYS:     # the same masks; sums in another order (dataset vs batch order): 1e-12
        assert rescored[key] == pytest.approx(report[key], rel=1e-12, abs=1e-15), key
    # one mask a sample: its AP is named apart from MTTR's mAP over all query masks
    assert "map" not in rescored and 0 <= rescored["map_single_mask"] <= 1
    result = CliRunner().invoke(app, ["evaluate", "--data", str(mixed_prep), "--predictions", str(tmp_path / "pred")])
    assert result.exit_code == 0 and "map_single_mask" in result.output


@pytest.fixture(scope="module")
def half_prep(synth_root, tmp_path_factory):
    """The 64 x 88 synthetic videos prepared at 32 x 44: scored at the original size on the original masks."""
    out = tmp_path_factory.mktemp("half_prep") / "prep"
    prepare_a2d(synth_root, out, short_source="manual", settings=PrepareSettings(window=8, short_side=32,
                max_long_side=44), workers=1, progress=False)
    return out


def test_query_masks_threshold_at_the_input_size_then_resize_to_the_original_as_mttr():
    logits = torch.full((1, 2, 2), -5.0)
    logits[0, 0, 0] = 5.0                                    # stride 4: an 8 x 8 input, top-left quarter on
    at_input = query_masks(logits, (8, 8), (8, 8))
    # bilinear (half-pixel centres): rows/columns 0..3 sample the on logit with weight >= 0.625; at (3, 3)
    # 0.625^2 = 0.39 of 5 against 0.61 of -5 is negative, so 15 pixels are on
    assert at_input.shape == (1, 8, 8) and int(at_input.sum()) == 15 and int(at_input[0, :4, :4].sum()) == 15
    cropped = query_masks(logits, (8, 8), (6, 7))           # padding cropped
    assert torch.equal(cropped, at_input[:, :6, :7])
    original = query_masks(logits, (8, 8), (8, 8), (16, 16))  # nearest x2 of the binary mask
    assert torch.equal(original[0], torch.from_numpy(np.kron(at_input[0].numpy(), np.ones((2, 2)))).bool())


def test_ground_truth_at_the_original_size_is_the_raw_mask(half_prep, synth_root, tmp_path):
    data = PreparedDataset(half_prep, "test")
    original, prepared = GroundTruth(data, "original"), GroundTruth(data, "prepared")
    for record in data.records:
        stored = data.read(record).long_mask
        assert tuple(record.size) == (32, 44) and tuple(record.orig_size) == (64, 88)
        ids, masks = read_frame_annotation(synth_root / "text_annotations/a2d_annotation_with_instances" /
                                           record.video_id / f"{record.frame:05d}.h5")
        assert np.array_equal(original.long_mask(record, stored), masks[list(ids).index(record.instance_id)])
        assert prepared.long_mask(record, stored) is stored
    with pytest.raises(FileNotFoundError, match="--raw ROOT"):
        GroundTruth(data, "original", raw=tmp_path / "nowhere").long_mask(data.records[0], stored)
    # the shard keeps the original masks: the raw data set is not needed to score at the original size
    data.manifest["source"] = str(tmp_path / "moved-away")
    record = data.records[0]
    assert GroundTruth(data, "original").long_mask(record, data.read(record).long_mask).shape == (64, 88)


def test_scoring_at_the_original_size_by_default(half_prep, checkpoint, tmp_path):
    data = PreparedDataset(half_prep, "test")
    report = evaluate_checkpoint(half_prep, checkpoint, save_predictions=tmp_path / "orig", progress=False,
                                 device="cpu")
    prepared = evaluate_checkpoint(half_prep, checkpoint, save_predictions=tmp_path / "prep", progress=False,
                                   device="cpu", resolution="prepared")
    assert report["resolution"] == "original" and prepared["resolution"] == "prepared"
    r = data.records[0]
    path = f"{r.video_id}/{r.instance_id}/{r.frame:05d}.png"
    from losh.evaluation.predictions import read_mask
    big, small = read_mask(tmp_path / "orig" / path), read_mask(tmp_path / "prep" / path)
    assert big.shape == (64, 88) and small.shape == (32, 44)
    assert np.array_equal(big, np.kron(small, np.ones((2, 2))).astype(bool))   # the same mask, resized
    assert report["mean_iou"] != prepared["mean_iou"]       # scored against other ground truth
    for name, expected in (("orig", report), ("prep", prepared)):
        rescored, _ = score_predictions(half_prep, tmp_path / name, progress=False)   # the folder's resolution
        for key in IOU_KEYS:
            assert rescored[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), (name, key)
