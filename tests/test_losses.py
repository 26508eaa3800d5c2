import math

import cv2
import numpy as np
import pytest
import torch

from losh.models.shared.losses import dice_loss, fbc_loss, is_referred_loss, lsi_loss, sigmoid_focal_loss
from losh.models.shared.warp import resize_flow, warp_by_flow

LN3 = math.log(3.0)


def test_dice_loss_by_hand():
    logits = torch.tensor([[0.0, LN3, -LN3, 0.0]])  # probabilities 0.5, 0.75, 0.25, 0.5
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # 1 - (2 * 1.25 + 1) / (2.0 + 2 + 1) = 0.3
    assert dice_loss(logits, targets, num_masks=1).item() == pytest.approx(0.3)
    # a perfect second mask adds ~0, and num_masks divides the sum
    second = torch.tensor([[20.0, 20.0, -20.0, -20.0]])
    both = dice_loss(torch.cat([logits, second]), torch.cat([targets, targets]), num_masks=2)
    assert both.item() == pytest.approx((0.3 + (1 - 5 / 5)) / 2, abs=1e-6)


def test_sigmoid_focal_loss_by_hand():
    logits = torch.tensor([[0.0, LN3]])   # p = 0.5 (target 1), p = 0.75 (target 0)
    targets = torch.tensor([[1.0, 0.0]])
    pixel_1 = 0.25 * (1 - 0.5) ** 2 * math.log(2)         # alpha * (1 - p_t)^2 * CE
    pixel_2 = 0.75 * (1 - 0.25) ** 2 * math.log(4)         # (1 - alpha) * (1 - p_t)^2 * CE, p_t = 0.25
    expected = (pixel_1 + pixel_2) / 2                      # mean over pixels
    assert sigmoid_focal_loss(logits, targets, num_masks=1).item() == pytest.approx(expected)
    assert sigmoid_focal_loss(torch.cat([logits] * 2), torch.cat([targets] * 2), num_masks=4).item() == \
        pytest.approx(expected / 2)


def test_is_referred_loss_by_hand():
    # query 0: p_ref 0.5, query 1: p_ref 0.75 (the referred one), query 2: p_ref 0.25
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [0.0, LN3]]])
    loss = is_referred_loss(logits, torch.tensor([1]), eos_coef=0.1)
    expected = -math.log(0.75) + 0.1 * -math.log(0.5) + 0.1 * -math.log(0.75)
    assert loss.item() == pytest.approx(expected)
    # two (sample, frame) pairs: summed then divided by 2
    two = is_referred_loss(torch.cat([logits, logits]), torch.tensor([1, 0]), eos_coef=0.1)
    other = -math.log(0.5) + 0.1 * -math.log(0.25) + 0.1 * -math.log(0.75)
    assert two.item() == pytest.approx((expected + other) / 2)


def test_lsi_loss_equation_1_by_hand():
    long = torch.tensor([0.9, 0.6, 0.4, 0.2])
    short = torch.tensor([0.8, 0.3, 0.9, 0.7])
    # after zeroing values below 0.5: long (0.9, 0.6, 0, 0), short (0.8, 0, 0.9, 0.7)
    # |m_l . m_s| = 0.72, |m_l| = 1.5: 1 - (0.72 + 1) / (1.5 + 1)
    assert lsi_loss(long, short).item() == pytest.approx(1 - 1.72 / 2.5)
    # long prediction inside the short one: no loss; disjoint: close to 1 for large masks
    inside = torch.tensor([0.9, 0.9, 0.0, 0.0])
    assert lsi_loss(inside, torch.tensor([1.0, 1.0, 1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert lsi_loss(torch.full((100,), 0.9), torch.zeros(100)).item() == pytest.approx(1 - 1 / 91)
    # empty long mask: epsilon keeps it finite (and zero)
    assert lsi_loss(torch.zeros(4), short).item() == pytest.approx(0.0)


def _features(anchor, neighbour):
    return torch.tensor([anchor, neighbour], dtype=torch.float32).view(1, 2, 1, 1, -1)


def test_fbc_loss_by_hand():
    features = _features([1, 2, 3], [5, 7, 10])                  # f_k, f_k+1 on a 1x3 map
    flows = torch.zeros(1, 1, 2, 1, 3)
    flows[:, :, 0] = 1.0                                          # u = +1: f_k(x) ~ f_k+1(x + 1)
    valid = torch.ones(1, 1, dtype=torch.bool)
    # warped f_k+1 = (7, 10, outside): ((7 - 1)^2 + (10 - 2)^2) / 2 valid pixels
    standard = fbc_loss(features, flows, valid, annotated_index=0, offsets=(1,))
    assert standard.item() == pytest.approx(50.0)
    # opposite: f_k sampled at x - 1 = (outside, 1, 2) against f_k+1 (5, 7, 10) on pixels 1, 2
    opposite = fbc_loss(features, flows, valid, annotated_index=0, offsets=(1,), variant="opposite")
    assert opposite.item() == pytest.approx(((1 - 7) ** 2 + (2 - 10) ** 2) / 2)
    mutual = fbc_loss(features, flows, valid, annotated_index=0, offsets=(1,), variant="mutual")
    assert mutual.item() == pytest.approx(standard.item() + opposite.item())
    # an invalid flow (neighbour outside the video) contributes nothing
    assert fbc_loss(features, flows, ~valid, annotated_index=0, offsets=(1,)).item() == 0.0
    # flows at twice the resolution with vectors in those pixels: resized (area) and scaled by 1/2
    fine = torch.zeros(1, 1, 2, 2, 6)
    fine[:, :, 0] = 2.0
    assert fbc_loss(features, fine, valid, annotated_index=0, offsets=(1,)).item() == pytest.approx(50.0)
    # same fine grid, but vectors in pixels of a 1x3 frame (the flow was only resampled)
    half = torch.zeros(1, 1, 2, 2, 6)
    half[:, :, 0] = 1.0
    assert fbc_loss(features, half, valid, annotated_index=0, offsets=(1,),
                    frame_size=(1, 3)).item() == pytest.approx(50.0)


def test_fbc_loss_reductions_by_hand():
    # two channels on a 1x3 map; f_k+1 shifted by one pixel (u = +1) so pixels 0 and 1 are valid
    features = torch.tensor([[[1, 2, 3], [0, 0, 0]], [[5, 7, 10], [1, 3, 0]]], dtype=torch.float32).view(1, 2, 2, 1, 3)
    flows = torch.zeros(1, 1, 2, 1, 3)
    flows[:, :, 0] = 1.0
    valid = torch.ones(1, 1, dtype=torch.bool)
    # warped f_k+1 = ((7, 10), (3, 0)) on pixels 0, 1: squared differences 36 + 64 (channel 0) + 9 + 0 (channel 1)
    total = 36 + 64 + 9 + 0
    by = {r: fbc_loss(features, flows, valid, annotated_index=0, offsets=(1,), reduction=r).item()
          for r in ("sum", "pixel_mean", "mean")}
    assert by["sum"] == pytest.approx(total)
    assert by["pixel_mean"] == pytest.approx(total / 2)          # 2 valid pixels
    assert by["mean"] == pytest.approx(total / (2 * 2))          # and 2 channels
    with pytest.raises(ValueError, match="reduction"):
        fbc_loss(features, flows, valid, annotated_index=0, offsets=(1,), reduction="max")


def _smooth_features(generator, b=2, c=4, h=16, w=20):
    coarse = torch.randn(b, c, 4, 5, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)


def test_fbc_loss_is_zero_for_an_exact_warp_and_large_for_a_wrong_flow():
    generator = torch.Generator().manual_seed(0)
    stride, offsets, k = 4, (-2, -1, 1, 2), 2
    b, c, h, w = 2, 4, 16, 20
    features = torch.zeros(b, 5, c, h, w)
    anchor = _smooth_features(generator, b, c, h, w)
    features[:, k] = anchor
    flows = torch.zeros(b, 4, 2, h * stride, w * stride)
    for index, offset in enumerate(offsets):
        dx, dy = offset, -offset                                     # feature pixels, one shift per neighbour
        # f_k(y, x) = f_k+t(y + dy, x + dx)  <=>  f_k+t(y, x) = f_k(y - dy, x - dx)
        neighbour = torch.randn(b, c, h, w, generator=generator)     # random outside the overlap
        neighbour[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            anchor[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        features[:, k + offset] = neighbour
        flows[:, index, 0], flows[:, index, 1] = dx * stride, dy * stride   # in frame pixels
    valid = torch.ones(b, 4, dtype=torch.bool)
    for variant in ("standard", "opposite", "mutual"):
        exact = fbc_loss(features, flows, valid, annotated_index=k, variant=variant)
        assert exact.item() < 1e-10, variant
        wrong = fbc_loss(features, -flows, valid, annotated_index=k, variant=variant)
        assert wrong.item() > 0.05, variant
        no_flow = fbc_loss(features, torch.zeros_like(flows), valid, annotated_index=k, variant=variant)
        assert no_flow.item() > 0.05, variant


def test_warp_is_exact_for_fractional_flows_on_linear_features():
    h, w = 12, 15
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    source = torch.stack([0.3 * xs - 0.2 * ys + 1, 0.1 * xs + 0.5 * ys])[None]
    u = 0.4 * torch.sin(ys / 3) + 0.25
    v = -0.3 * torch.cos(xs / 4)
    warped, valid = warp_by_flow(source, torch.stack([u, v])[None])
    expected = torch.stack([0.3 * (xs + u) - 0.2 * (ys + v) + 1, 0.1 * (xs + u) + 0.5 * (ys + v)])[None]
    assert valid.sum() > 0.7 * h * w
    assert torch.allclose(warped[valid.expand_as(warped)], expected[valid.expand_as(expected)], atol=1e-10)
    # invalid exactly where the bilinear sample leaves the map
    sample_x, sample_y = xs + u, ys + v
    inside = (sample_x >= 0) & (sample_x <= w - 1) & (sample_y >= 0) & (sample_y <= h - 1)
    assert torch.equal(valid[0, 0], inside)


def test_resize_flow_scales_vectors_to_the_target_grid():
    flow = torch.zeros(1, 2, 64, 96)
    flow[:, 0], flow[:, 1] = 8.0, -4.0
    small = resize_flow(flow, (16, 24))
    assert torch.allclose(small[:, 0], torch.tensor(2.0)) and torch.allclose(small[:, 1], torch.tensor(-1.0))
    # vectors measured in pixels of a 128x192 frame, flow stored at 64x96
    assert torch.allclose(resize_flow(flow, (16, 24), frame_size=(128, 192))[:, 0], torch.tensor(1.0))


def test_warp_convention_matches_opencv_farneback():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (80, 96)).astype(np.float32), (0, 0), 2.0)
    shift_x, shift_y = 3, 2
    frame_k = texture[10:74, 10:90]
    frame_next = texture[10 - shift_y:74 - shift_y, 10 - shift_x:90 - shift_x]  # content moves by (+3, +2)
    flow = cv2.calcOpticalFlowFarneback(frame_k.astype(np.uint8), frame_next.astype(np.uint8), None,
                                        0.5, 3, 15, 3, 5, 1.2, 0)
    assert np.median(flow[..., 0]) == pytest.approx(shift_x, abs=0.3)
    assert np.median(flow[..., 1]) == pytest.approx(shift_y, abs=0.3)
    source = torch.from_numpy(frame_next)[None, None]
    warped, valid = warp_by_flow(source, torch.from_numpy(flow).permute(2, 0, 1)[None])
    inner = (slice(8, -8), slice(8, -8))
    error_warped = (warped[0, 0] - torch.from_numpy(frame_k))[inner].abs().mean()
    error_unwarped = (source[0, 0] - torch.from_numpy(frame_k))[inner].abs().mean()
    assert valid[0, 0][inner].all()
    assert error_warped < 0.15 * error_unwarped


def test_stride4_mask_resolution_averages_targets_onto_the_prediction_grid():
    from losh.models.losh_m.criterion import prepare_targets

    masks = torch.zeros(2, 8, 12)
    masks[0, :4, :4] = 1          # a whole 4 x 4 cell: on
    masks[0, 4:, 8:10] = 1        # half a cell: not more than half, off
    masks[1, 4:8, 4:7] = 1        # three quarters of a cell: on
    full, = prepare_targets([{"instance_masks": masks, "referred_index": 0}], (8, 12))
    coarse, = prepare_targets([{"instance_masks": masks, "referred_index": 0}], (8, 12), grid=(2, 3))
    assert full.size == (8, 12) and coarse.size == (2, 3)
    assert coarse.long_masks.tolist() == [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]]
    assert bool(coarse.visible.all()) and torch.equal(full.visible, coarse.visible)   # judged at full size
