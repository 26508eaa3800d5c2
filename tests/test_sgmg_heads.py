"""SgMg's spectrum-guided fusion, dynamic mask head, MSO and the box utilities, on small synthetic tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from losh.models.losh_s.mask_head import (
    DynamicMaskHead,
    MultiGranularityRefinement,
    compute_locations,
    mask_features_from_memory,
    relative_coordinates,
    to_fine_masks,
)
from losh.models.losh_s.spectral_fusion import (
    FrequencyModulation,
    SpectrumGuidedFusion,
    VisionLanguageFusion,
    clip_tokens,
    frames_from_clip_tokens,
    gaussian_filter,
)
from losh.models.shared.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    masks_to_boxes,
    normalised_cxcywh_from_masks,
)
from losh.models.shared.position_encoding import sine_position_encoding_1d, sine_position_encoding_2d

# ---------------------------------------------------------------- frequency modulation


def _identity_spectrum_mixing(module: FrequencyModulation, shift: float) -> None:
    """conv2(relu(conv1(z))) = z for |z| < shift: conv1 = I + shift (all positive), conv2 = I - shift."""
    channels = module.conv1.in_channels
    eye = torch.eye(channels)[:, :, None, None]
    with torch.no_grad():
        module.conv1.weight.copy_(eye)
        module.conv1.bias.fill_(shift)
        module.conv2.weight.copy_(eye)
        module.conv2.bias.fill_(-shift)


def _force_strength(module: FrequencyModulation, logit_sign: float) -> None:
    """Pooled conv output = 1 on every channel, hidden = 1, logit = sign * 1e4 * C: sigmoid is exactly 0 or 1."""
    channels = module.laplace.in_channels
    with torch.no_grad():
        module.laplace.weight.zero_()
        module.laplace.bias.fill_(1.0)
        module.fc[0].weight.copy_(torch.eye(channels))
        module.fc[2].weight.fill_(logit_sign * 1e4)


def test_gaussian_filter_is_centred_at_half_size():
    g = gaussian_filter(8, 6, sigma=7.0)
    assert g.shape == (1, 1, 8, 6)
    assert g[0, 0, 4, 3].item() == 1.0
    assert g[0, 0, 0, 0].item() == pytest.approx(math.exp(-(4 ** 2 + 3 ** 2) / (2 * 49)))
    assert g.flatten().argmax().item() == 4 * 6 + 3


def test_frequency_modulation_with_zero_strength_and_identity_mixing_doubles_the_input():
    torch.manual_seed(0)
    module = FrequencyModulation(4, sigma=7.0)
    x = 0.1 * torch.randn(2, 4, 8, 8)
    spectrum = torch.fft.fft2(x)
    _identity_spectrum_mixing(module, shift=float(torch.cat([spectrum.real, spectrum.imag]).abs().max()) + 1.0)
    _force_strength(module, -1.0)
    assert torch.equal(module.strength(x), torch.zeros(2, 1, 1, 1))
    out, high_filter = module(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, 2 * x, atol=1e-5), (out - 2 * x).abs().max()
    assert torch.equal(high_filter, gaussian_filter(8, 8, 7.0))


def test_frequency_modulation_with_full_strength_zeroes_the_centre_frequency():
    torch.manual_seed(1)
    module = FrequencyModulation(3, sigma=1e-3)  # G = 1 at (h // 2, w // 2), exactly 0 elsewhere
    x = 0.1 * torch.randn(2, 3, 8, 10)
    spectrum = torch.fft.fft2(x)
    _identity_spectrum_mixing(module, shift=float(torch.cat([spectrum.real, spectrum.imag]).abs().max()) + 1.0)
    _force_strength(module, +1.0)
    assert torch.equal(module.strength(x), torch.ones(2, 1, 1, 1))
    out, high_filter = module(x)
    assert high_filter.sum().item() == 1.0 and high_filter[0, 0, 4, 5].item() == 1.0
    added = torch.fft.fft2(out - x)
    assert added[..., 4, 5].abs().max().item() < 1e-5
    kept = torch.ones(8, 10, dtype=torch.bool)
    kept[4, 5] = False
    assert torch.allclose(added[..., kept], spectrum[..., kept], atol=1e-5)
    assert spectrum[..., 4, 5].abs().min().item() > 1e-3  # the zeroed frequency was there before


def test_frequency_modulation_resizes_the_previous_filter():
    torch.manual_seed(2)
    module = FrequencyModulation(4)
    previous = gaussian_filter(8, 8, 2.0)
    out, high_filter = module(torch.randn(3, 4, 4, 6), previous)
    assert out.shape == (3, 4, 4, 6) and high_filter.shape == (1, 1, 4, 6)
    assert torch.allclose(high_filter, F.interpolate(previous, size=(4, 6), mode="bilinear", align_corners=False))
    # the same size passes through unchanged (the post-fusion modulation of a level)
    _, same = module(torch.randn(3, 4, 4, 6), high_filter)
    assert torch.allclose(same, high_filter)


def test_frequency_modulation_gradients_autocast_and_tiny_maps():
    torch.manual_seed(3)
    module = FrequencyModulation(4)
    x = torch.randn(2, 4, 7, 9, requires_grad=True)
    out, _ = module(x)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out, _ = module(torch.randn(2, 4, 7, 9).to(torch.bfloat16))
    assert out.dtype == torch.float32
    out, high_filter = module(torch.randn(2, 4, 2, 1))  # smaller than the 3x3 strength conv
    assert out.shape == (2, 4, 2, 1) and high_filter.shape == (1, 1, 2, 1)


# ---------------------------------------------------------------- vision-language fusion


def _identity_attention(fusion: VisionLanguageFusion) -> None:
    attention = fusion.multihead_attn
    d = attention.embed_dim
    with torch.no_grad():
        attention.in_proj_weight.copy_(torch.cat([torch.eye(d)] * 3))
        attention.in_proj_bias.zero_()
        attention.out_proj.weight.copy_(torch.eye(d))
        attention.out_proj.bias.zero_()


def test_vision_language_fusion_is_visual_times_attention_by_hand():
    torch.manual_seed(4)
    fusion = VisionLanguageFusion(4, nheads=1)
    _identity_attention(fusion)
    visual, words, word_pos = torch.randn(2, 6, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    padding = torch.tensor([[False, False, True], [False, False, False]])
    out = fusion(visual, words, padding, word_pos)
    scores = visual @ (words + word_pos).transpose(1, 2) / math.sqrt(4)
    weights = scores.masked_fill(padding[:, None, :], float("-inf")).softmax(dim=-1)
    expected = visual * (weights @ words)
    assert torch.allclose(out, expected, atol=1e-6)
    assert weights[0, :, 2].abs().max() == 0


def test_padded_words_do_not_change_the_fusion():
    torch.manual_seed(5)
    fusion = VisionLanguageFusion(8, nheads=2).eval()
    visual, words, word_pos = torch.randn(1, 10, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    padding = torch.tensor([[False, False, False, True, True]])
    out = fusion(visual, words, padding, word_pos)
    changed, changed_pos = words.clone(), word_pos.clone()
    changed[:, 3:] = 100 * torch.randn(1, 2, 8)
    changed_pos[:, 3:] = torch.randn(1, 2, 8)
    assert torch.allclose(fusion(visual, changed, padding, changed_pos), out, atol=1e-6)
    assert torch.allclose(fusion(visual, words[:, :3], None, word_pos[:, :3]), out, atol=1e-6)


def test_clip_tokens_follow_sgmg_rearrangement():
    frames = torch.randn(6, 4, 3, 5)  # B = 2 clips of T = 3 frames
    tokens = clip_tokens(frames, 3)
    # '(b t) c h w -> (t h w) b c', batch first here
    expected = frames.view(2, 3, 4, 3, 5).permute(0, 1, 3, 4, 2).reshape(2, 3 * 3 * 5, 4)
    assert torch.equal(tokens, expected)
    assert torch.equal(frames_from_clip_tokens(tokens, 3, 3, 5), frames)
    with pytest.raises(ValueError):
        clip_tokens(frames, 4)


def test_spectrum_guided_fusion_shapes_filters_and_clips():
    torch.manual_seed(6)
    shared = VisionLanguageFusion(8, nheads=2)
    levels = [SpectrumGuidedFusion(8, shared), SpectrumGuidedFusion(8, shared)]
    assert levels[0].fusion is levels[1].fusion
    words, word_padding = torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    word_pos = sine_position_encoding_1d(word_padding, 8)
    visual = torch.randn(4, 8, 6, 10)  # B = 2, T = 2
    fused, high_filter = levels[0](visual, words, word_padding, word_pos, 2, None)
    assert fused.shape == (4, 8, 6, 10) and high_filter.shape == (1, 1, 6, 10)
    coarse, coarse_filter = levels[1](torch.randn(4, 8, 3, 5), words, word_padding, word_pos, 2, high_filter)
    assert coarse.shape == (4, 8, 3, 5)
    assert torch.allclose(coarse_filter, F.interpolate(high_filter, size=(3, 5), mode="bilinear", align_corners=False))
    # the frames of clip 0 see only clip 0's words
    other_words = words.clone()
    other_words[1] = torch.randn(5, 8)
    refused, _ = levels[0](visual, other_words, word_padding, word_pos, 2, None)
    assert torch.allclose(refused[:2], fused[:2], atol=1e-6)
    assert not torch.allclose(refused[2:], fused[2:], atol=1e-3)


def test_sine_position_encoding_1d_by_hand():
    padding = torch.tensor([[False, False, False, False], [False, False, True, True]])
    pos = sine_position_encoding_1d(padding, 4)
    assert pos.shape == (2, 4, 4)
    angle = torch.tensor([1.0, 2.0, 3.0, 4.0]) / (4 + 1e-6) * 2 * math.pi
    expected = torch.stack([angle.sin(), angle.cos(), (angle / 100).sin(), (angle / 100).cos()], dim=1)
    assert torch.allclose(pos[0], expected, atol=1e-6)
    # positions count the real words only: the second sentence ends at 2 pi after two words
    assert pos[1, 1, 0].item() == pytest.approx(math.sin(2 * 2 * math.pi / (2 + 1e-6)), abs=1e-5)
    assert pos[1, 0, 1].item() == pytest.approx(math.cos(math.pi), abs=1e-5)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_sine_position_encoding_2d_by_hand_with_detrs_and_sgmgs_offsets(offset):
    """Row i of a 3-row map (no padding) sits at (i + 1 - offset) / 3 * 2 pi: DETR's and MTTR's offset 0, SgMg's
    0.5 (models/position_encoding.py); half the channels for y, then x, sin and cos interleaved."""
    padding = torch.zeros(1, 3, 2, dtype=torch.bool)
    pos = sine_position_encoding_2d(padding, 8, offset=offset)
    assert pos.shape == (1, 3, 2, 8)
    y = (torch.arange(1, 4) - offset) / (3 + 1e-6) * 2 * math.pi
    x = (torch.arange(1, 3) - offset) / (2 + 1e-6) * 2 * math.pi
    assert torch.allclose(pos[0, :, 0, 0], y.sin(), atol=1e-6) and torch.allclose(pos[0, :, 0, 1], y.cos(), atol=1e-6)
    assert torch.allclose(pos[0, :, 0, 2], (y / 100).sin(), atol=1e-6)
    assert torch.allclose(pos[0, 0, :, 4], x.sin(), atol=1e-6) and torch.allclose(pos[0, 0, :, 5], x.cos(), atol=1e-6)


# ---------------------------------------------------------------- dynamic mask head


def test_compute_locations_and_relative_coordinates_by_hand():
    locations = compute_locations(3, 4, stride=8)
    assert locations.shape == (12, 2)
    assert locations[0].tolist() == [4.0, 4.0] and locations[1 * 4 + 2].tolist() == [20.0, 12.0]
    reference = torch.tensor([0.5, 0.25]).view(1, 1, 1, 2)  # in a 32 x 40 (H x W) input: (20, 8) pixels
    offsets = relative_coordinates(reference, (32, 40), 3, 4)
    assert offsets.shape == (1, 1, 1, 2, 3, 4)
    assert offsets[0, 0, 0, :, 1, 2].tolist() == [0.0, -4.0]     # location (20, 12)
    assert offsets[0, 0, 0, :, 0, 0].tolist() == [16.0, 4.0]     # location (4, 4): raw pixels, not normalised
    assert offsets[0, 0, 0, :, 2, 3].tolist() == [20 - 28.0, 8 - 20.0]
    per_clip = relative_coordinates(reference.expand(2, 1, 1, 2), torch.tensor([[32, 40], [64, 40]]), 3, 4)
    assert torch.equal(per_clip[0], offsets[0])
    assert per_clip[1, 0, 0, :, 0, 0].tolist() == [16.0, 12.0]  # (20, 16) - (4, 4)


def _explicit_dynamic_masks(head: DynamicMaskHead, queries, mask_features, reference_points, input_size):
    """Each query's 1x1 convolutions written out with einsum over its own parsed parameters."""
    b, t, q, _ = queries.shape
    h, w = mask_features.shape[-2:]
    height, width = input_size
    params = head.controller(queries)
    out = torch.empty(b, t, q, 16, h, w)
    for bi in range(b):
        for ti in range(t):
            for qi in range(q):
                cx, cy = reference_points[bi, ti, qi] * torch.tensor([width, height])
                coords = torch.empty(2, h, w)
                for i in range(h):
                    for j in range(w):
                        coords[0, i, j] = cx - (8 * j + 4)
                        coords[1, i, j] = cy - (8 * i + 4)
                x = torch.cat([mask_features[bi, ti], coords])
                chunks = torch.split(params[bi, ti, qi], head.weight_nums + head.bias_nums)
                layers = len(head.weight_nums)
                for layer in range(layers):
                    weight = chunks[layer].view(16, x.shape[0])
                    x = torch.einsum("oc,chw->ohw", weight, x) + chunks[layers + layer][:, None, None]
                    if layer < layers - 1:
                        x = x.relu()
                out[bi, ti, qi] = x
    return out


@pytest.mark.parametrize("controller_layers", [2, 3])
def test_dynamic_mask_head_equals_explicit_per_query_convolutions(controller_layers):
    torch.manual_seed(7)
    head = DynamicMaskHead(d_model=8, in_channels=3, controller_layers=controller_layers)
    assert sum(head.weight_nums) + sum(head.bias_nums) == head.controller.layers[-1].out_features
    assert head.weight_nums[0] == (3 + 2) * 16
    assert all(layer.bias.abs().sum() == 0 for layer in head.controller.layers)
    queries, mask_features = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 4, 5)
    reference_points, input_size = torch.rand(2, 2, 3, 2), (32, 40)
    out = head(queries, mask_features, reference_points, input_size)
    assert out.shape == (2, 2, 3, 16, 4, 5)
    expected = _explicit_dynamic_masks(head, queries, mask_features, reference_points, input_size)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5), (out - expected).abs().max()
    out.sum().backward()
    assert all(layer.weight.grad.abs().sum() > 0 for layer in head.controller.layers)


def test_dynamic_mask_head_needs_16_output_channels():
    with pytest.raises(ValueError):
        DynamicMaskHead(d_model=8, in_channels=3, dynamic_channels=8)


def test_pixel_shuffle_layout():
    patches = torch.arange(16, dtype=torch.float32).view(16, 1, 1).expand(2, 3, 16, 2, 3)
    fine = to_fine_masks(patches)
    assert fine.shape == (2, 3, 8, 12)
    for k in range(16):
        assert (fine[..., k // 4::4, k % 4::4] == k).all(), k


def test_mask_features_from_memory():
    torch.manual_seed(8)
    finest = torch.randn(2, 4, 8, 10)
    coarse = [torch.zeros(2, 4, 4, 5), torch.zeros(2, 4, 2, 3)]
    # bicubic resizing to the same size is the identity
    assert torch.allclose(mask_features_from_memory([finest] + coarse), finest, atol=1e-6)
    coarse[0].fill_(2.0)
    summed = mask_features_from_memory([finest] + coarse)
    assert summed.shape == (2, 4, 8, 10) and torch.allclose(summed, finest + 2.0, atol=1e-5)


def test_multi_granularity_refinement_shapes_and_zero_convolutions():
    torch.manual_seed(9)
    refine = MultiGranularityRefinement(image_dims=(6, 12))
    patches, stride4, stride8 = torch.randn(3, 16, 4, 5), torch.randn(3, 6, 8, 10), torch.randn(3, 12, 4, 5)
    assert refine(patches, stride4, stride8).shape == (3, 16, 8, 10)
    assert to_fine_masks(refine(patches, stride4, stride8)).shape == (3, 32, 40)
    with torch.no_grad():
        for parameter in refine.parameters():
            parameter.zero_()
    upsampled = F.interpolate(patches, size=(8, 10), mode="bilinear", align_corners=False)
    assert torch.allclose(refine(patches, stride4, stride8), upsampled, atol=1e-6)
    # ReLU before the first convolution: identity convolutions on the patch channels add relu(patches)
    with torch.no_grad():
        for channel in range(16):
            refine.conv1_1div8.weight[channel, channel, 1, 1] = 1.0
            refine.conv2_1div8.weight[channel, channel, 1, 1] = 1.0
    expected = F.interpolate(patches + patches.relu(), size=(8, 10), mode="bilinear", align_corners=False)
    assert torch.allclose(refine(patches, stride4, stride8), expected, atol=1e-6)
    with pytest.raises(ValueError):
        refine(patches, stride4, torch.randn(3, 12, 5, 5))


# ---------------------------------------------------------------- box utilities


def test_box_format_round_trips():
    assert box_xyxy_to_cxcywh(torch.tensor([1.0, 2.0, 5.0, 10.0])).tolist() == [3.0, 6.0, 4.0, 8.0]
    assert box_cxcywh_to_xyxy(torch.tensor([3.0, 6.0, 4.0, 8.0])).tolist() == [1.0, 2.0, 5.0, 10.0]
    torch.manual_seed(10)
    boxes = torch.rand(2, 7, 4)
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes, atol=1e-6)
    assert box_area(torch.tensor([[1.0, 2.0, 5.0, 10.0]])).tolist() == [32.0]


def test_generalized_box_iou_by_hand():
    unit, disjoint = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    iou, union = box_iou(unit, disjoint)
    assert union.item() == 2.0 and iou.item() == pytest.approx(0.0, abs=1e-6)
    assert generalized_box_iou(unit, disjoint).item() == pytest.approx(-1 / 3, abs=1e-6)  # enclosing 3, union 2
    # SgMg's 1e-6 in the enclosing term leaves 1 - 1e-6 / (area + 1e-6)
    assert generalized_box_iou(unit, unit).item() == pytest.approx(1.0, abs=2e-6)
    outer, inner = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert generalized_box_iou(outer, inner).item() == pytest.approx(0.25, abs=1e-6)  # enclosing = union
    half = torch.tensor([[0.0, 0.0, 2.0, 1.0]])  # overlaps unit by 1, union 2, enclosing 2
    pairwise = generalized_box_iou(torch.cat([unit, outer]), torch.cat([disjoint, inner, half]))
    assert pairwise.shape == (2, 3)
    assert pairwise[0, 2].item() == pytest.approx(0.5, abs=1e-6)
    assert pairwise[1, 1].item() == pytest.approx(0.25, abs=1e-6)
    assert pairwise[1, 0].item() == pytest.approx(1 / 16, abs=1e-6)  # (2, 0, 3, 1) lies inside outer
    # unit and inner touch at (1, 1): no overlap, union 5, enclosing 3 x 3
    assert pairwise[0, 1].item() == pytest.approx(0 - (9 - 5) / 9, abs=1e-6)
    with pytest.raises(ValueError):
        generalized_box_iou(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), unit)


def test_masks_to_boxes_by_hand():
    masks = torch.zeros(3, 6, 7, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True
    masks[0, 2, 3:5] = False  # a hole changes nothing
    masks[1, 4, 6] = True      # one pixel: zero width (max index, not + 1)
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 3.0], [6.0, 4.0, 6.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    assert torch.equal(masks_to_boxes(masks.float()), boxes)
    assert masks_to_boxes(torch.zeros(0, 6, 7)).shape == (0, 4)


def test_normalised_cxcywh_from_masks():
    masks = torch.zeros(2, 4, 8)
    masks[0, 1:3, :] = 1.0  # xyxy (0, 1, 7, 2)
    boxes = normalised_cxcywh_from_masks(masks)
    assert torch.allclose(boxes[0], torch.tensor([3.5 / 8, 1.5 / 4, 7 / 8, 1 / 4]))
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    rescaled = normalised_cxcywh_from_masks(masks, size=(8, 16))
    assert torch.allclose(rescaled[0], torch.tensor([3.5 / 16, 1.5 / 8, 7 / 16, 1 / 8]))
