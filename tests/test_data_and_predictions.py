import json

import pytest
import torch

from losh.data.dataset import Augment, RVOSDataset, collate, normalise_frames, swap_left_right
from losh.evaluation.predictions import mask_path, score_predictions, write_mask, write_scores
from losh.schemas.prepared_reader import PreparedDataset


@pytest.fixture()
def prep(prepared):
    return prepared


def test_swap_left_right_keeps_case_and_words():
    assert swap_left_right("the dog on the left, moving Right") == "the dog on the right, moving Left"
    assert swap_left_right("bright leftover") == "bright leftover"
    assert swap_left_right("LEFT lefts") == "RIGHT rights"


def test_flip_augmentation_flips_frames_masks_and_texts_together(prep):
    plain = RVOSDataset(prep, "train")
    flipped = RVOSDataset(prep, "train", augment=Augment(flip_p=1.0))
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        assert b["flipped"] and not a["flipped"]
        assert torch.equal(a["frames"].flip(-1), b["frames"])
        assert torch.equal(a["long_mask"].flip(-1), b["long_mask"])
        assert torch.equal(a["short_mask"].flip(-1), b["short_mask"])
        assert b["long_text"] == swap_left_right(a["long_text"])
        assert a["frames"].dtype == torch.uint8 and a["frames"].shape[:2] == (8, 3)


def test_random_resize_and_collate_pad(prep):
    ds = RVOSDataset(prep, "train", augment=Augment(scales=(48,), flip_p=0.0))
    item = ds[0]
    assert item["frames"].shape[-2:] == (48, 66)
    assert item["long_mask"].shape == (1, 48, 66) and item["long_mask"].dtype == torch.bool   # one supervised frame
    plain = RVOSDataset(prep, "train")[1]
    batch = collate([item, plain])
    assert batch["frames"].shape == (2, 8, 3, 64, 88)
    assert batch["valid_size"].tolist() == [[48, 66], [64, 88]]
    assert not batch["long_mask"][0, :, 48:].any()
    x = normalise_frames(batch["frames"])
    raw = float(batch["frames"][0, 0, 1, 0, 0])
    assert x.dtype == torch.float32 and abs(float(x[0, 0, 1, 0, 0]) - (raw / 255 - 0.456) / 0.224) < 1e-5


def test_scoring_a_predictions_folder(prep, tmp_path):
    data = PreparedDataset(prep, "test")
    out = tmp_path / "pred"
    for r in data.records:                      # perfect predictions
        write_mask(mask_path(out, r), data.read(r).long_mask)
    write_scores(out, "test", {r.sample_id: 0.9 for r in data.records})
    metrics, missing = score_predictions(prep, out, progress=False)
    assert missing == [] and metrics["mean_iou"] == 1.0 and metrics["map_single_mask"] == pytest.approx(1.0)
    assert "map" not in metrics and metrics["resolution"] == "original"
    assert metrics["num_images"] == len(data.records)
    # drop one prediction: scored as an empty mask, and reported
    gone = data.records[0]
    mask_path(out, gone).unlink()
    metrics, missing = score_predictions(prep, out, progress=False)
    assert missing == [gone.sample_id]
    assert metrics["mean_iou"] == pytest.approx((len(data.records) - 1) / len(data.records))
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["schema"] == "losh.predictions"


def test_flows_follow_the_flip_and_the_resize(prepared_with_flows):
    plain = RVOSDataset(prepared_with_flows, "train", with_flows=True)
    flipped = RVOSDataset(prepared_with_flows, "train", with_flows=True, augment=Augment(flip_p=1.0))
    a, b = plain[0], flipped[0]
    assert a["flows"].shape == (4, 2, 16, 22) and a["flow_valid"].dtype == torch.bool
    assert torch.equal(b["flows"][:, 0], -a["flows"][:, 0].flip(-1))   # x mirrored and negated
    assert torch.equal(b["flows"][:, 1], a["flows"][:, 1].flip(-1))
    assert torch.equal(a["flow_valid"], b["flow_valid"])
    # stored in grid pixels (stride 4): the loader gives frame pixels, 4x larger
    from losh.schemas.flow_reader import FlowReader
    r = plain.data.records[0]
    grid, _ = FlowReader(prepared_with_flows).read(r.video_id, r.frame)
    assert torch.allclose(a["flows"], torch.from_numpy(grid) * 4)
    half = RVOSDataset(prepared_with_flows, "train", with_flows=True, augment=Augment(scales=(32,), flip_p=0.0))[0]
    assert torch.allclose(half["flows"], a["flows"] * 0.5, atol=1e-6)


def test_padding_is_zero_after_normalising_and_the_frames_inside_are_unchanged(prep):
    small = RVOSDataset(prep, "train", augment=Augment(scales=(48,), flip_p=0.0))[0]    # 48 x 66
    plain = RVOSDataset(prep, "train")[1]                                                # 64 x 88
    batch = collate([small, plain])
    x = normalise_frames(batch["frames"], batch["valid_size"])
    assert x.shape == (2, 8, 3, 64, 88)
    assert torch.equal(x[0, :, :, :48, :66], normalise_frames(small["frames"][None])[0])
    assert torch.equal(x[1], normalise_frames(plain["frames"][None])[0])
    assert (x[0, :, :, 48:] == 0).all() and (x[0, :, :, :, 66:] == 0).all()
    # without valid_size, collate's black padding would be -mean/std, not 0
    assert float(normalise_frames(batch["frames"])[0, 0, 0, 60, 80]) == pytest.approx(-0.485 / 0.229, abs=1e-6)
