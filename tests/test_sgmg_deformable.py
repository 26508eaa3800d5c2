"""SgMg's deformable attention and transformer (losh.models.losh_s): the sampling convention, gradients, padding,
shapes."""
from __future__ import annotations

import math

import pytest
import torch

from losh.models.losh_s.deformable_attention import MSDeformAttn, circle_offsets, multi_scale_deformable_attention
from losh.models.losh_s.deformable_transformer import (
    DeformableTransformer,
    encoder_reference_points,
    inverse_sigmoid,
    scale_by_valid_ratios,
    valid_ratios_of,
)
from losh.models.shared.layers import MLP


def _start_index(shapes: torch.Tensor) -> torch.Tensor:
    return torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))


def _bilinear_reference(value, shapes, locations, weights):
    """The CUDA op's sampling written point by point: pixel (i, j) centred at ((j + 0.5) / W, (i + 0.5) / H),
    the four nearest centres weighted bilinearly, centres outside the map reading zero."""
    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = locations.shape
    starts = _start_index(shapes).tolist()
    output = torch.zeros(n_batch, n_queries, n_heads, head_dim, dtype=value.dtype)
    for n in range(n_batch):
        for q in range(n_queries):
            for m in range(n_heads):
                for level in range(n_levels):
                    height, width = shapes[level].tolist()
                    for p in range(n_points):
                        x = locations[n, q, m, level, p, 0].item() * width - 0.5
                        y = locations[n, q, m, level, p, 1].item() * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(head_dim, dtype=value.dtype)
                        for row in (y0, y0 + 1):
                            for col in (x0, x0 + 1):
                                if 0 <= row < height and 0 <= col < width:
                                    corner = (1 - abs(x - col)) * (1 - abs(y - row))
                                    sample += corner * value[n, starts[level] + row * width + col, m]
                        output[n, q, m] += weights[n, q, m, level, p].item() * sample
    return output.reshape(n_batch, n_queries, n_heads * head_dim)


def test_grid_sample_form_matches_pointwise_bilinear_sampling():
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[5, 7], [3, 4], [2, 2]])
    n_batch, n_queries, n_heads, head_dim, n_points = 2, 4, 3, 5, 4
    value = torch.randn(n_batch, int(shapes.prod(1).sum()), n_heads, head_dim, generator=generator, dtype=torch.float64)
    locations = torch.rand(n_batch, n_queries, n_heads, 3, n_points, 2, generator=generator, dtype=torch.float64)
    locations = locations * 1.6 - 0.3  # some outside [0, 1], reading partly or only zeros
    # exactly on pixel centres, on the borders and corners of the map, and far outside
    for level, (height, width) in enumerate(shapes.tolist()):
        locations[0, 0, :, level, 0] = torch.tensor([(width - 1 + 0.5) / width, 0.5 / height], dtype=torch.float64)
        locations[0, 1, :, level, 1] = torch.tensor([1.0 / width, 2.0 / height], dtype=torch.float64)
    locations[1, 0, :, :, 0] = torch.tensor([0.0, 0.0], dtype=torch.float64)
    locations[1, 0, :, :, 1] = torch.tensor([1.0, 0.5], dtype=torch.float64)
    locations[1, 0, :, :, 2] = torch.tensor([0.5, 1.0], dtype=torch.float64)
    locations[1, 1, :, :, 3] = torch.tensor([-0.8, 1.9], dtype=torch.float64)
    weights = torch.rand(n_batch, n_queries, n_heads, 3, n_points, generator=generator, dtype=torch.float64)

    ours = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = _bilinear_reference(value, shapes, locations, weights)
    assert ours.shape == (n_batch, n_queries, n_heads * head_dim)
    assert (ours - expected).abs().max().item() < 1e-10
    # far outside, a point reads nothing
    lone = torch.zeros_like(weights)
    lone[1, 1, :, :, 3] = 1.0
    assert multi_scale_deformable_attention(value, shapes, locations, lone)[1, 1].abs().max().item() == 0.0


def test_hand_case_pixel_centre_and_midpoint():
    shapes = torch.tensor([[2, 2]])
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)  # row-major: (0,0)=1, (0,1)=2, (1,0)=3, (1,1)=4
    weights = torch.ones(1, 2, 1, 1, 1)
    locations = torch.tensor([[0.75, 0.25],   # the centre of pixel (row 0, column 1)
                              [0.50, 0.25]])  # halfway between the centres of (0, 0) and (0, 1)
    output = multi_scale_deformable_attention(value, shapes, locations.view(1, 2, 1, 1, 1, 2), weights)
    assert output[0, 0, 0].item() == 2.0
    assert output[0, 1, 0].item() == 1.5


def test_gradcheck_value_locations_weights():
    generator = torch.Generator().manual_seed(1)
    shapes = torch.tensor([[3, 2], [2, 2]])
    value = torch.randn(1, 10, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    # inside the maps, away from the centres' grid lines where bilinear sampling has kinks
    locations = (0.1 + 0.8 * torch.rand(1, 2, 2, 2, 2, 2, generator=generator, dtype=torch.float64)).requires_grad_()
    weights = torch.rand(1, 2, 2, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)

    def attend(value, locations, weights):
        return multi_scale_deformable_attention(value, shapes, locations, weights)

    assert torch.autograd.gradcheck(attend, (value, locations, weights), eps=1e-6, atol=1e-7)


def _attention_inputs(d_model=32, n_levels=2, batch=2, n_queries=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3]][:n_levels])
    length = int(shapes.prod(1).sum())
    query = torch.randn(batch, n_queries, d_model, generator=generator)
    inputs = torch.randn(batch, length, d_model, generator=generator)
    points = torch.rand(batch, n_queries, n_levels, 2, generator=generator)
    return shapes, query, inputs, points


def test_msdeformattn_output_shape_and_reference_kinds():
    torch.manual_seed(0)
    attention = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    shapes, query, inputs, points = _attention_inputs()
    boxes = torch.cat([points, torch.full_like(points, 0.3)], -1)
    for references in (points, boxes):
        assert attention(query, references, inputs, shapes, _start_index(shapes)).shape == (2, 6, 32)
        locations, weights = attention.sampling_locations_and_weights(query, references, shapes)
        assert locations.shape == (2, 6, 4, 2, 3, 2)
        assert weights.shape == (2, 6, 4, 2, 3)
        torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, 6, 4))
    with pytest.raises(ValueError):
        attention(query, points[..., :1], inputs, shapes, _start_index(shapes))


def test_msdeformattn_initial_offsets_are_the_circle_pattern():
    attention = MSDeformAttn(d_model=32, n_levels=2, n_heads=8, n_points=3)
    headings = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32)
    expected = headings.view(8, 1, 1, 2) * torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1)  # (M, P, 2) per level
    expected = expected.expand(8, 2, 3, 2)
    torch.testing.assert_close(attention.sampling_offsets.bias.view(8, 2, 3, 2), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(circle_offsets(8, 2, 3), expected, atol=1e-6, rtol=0)

    # whatever the query: points step out in pixels of each level, boxes in 1/P of their half size
    shapes, query, _, points = _attention_inputs()
    locations, weights = attention.sampling_locations_and_weights(query, points, shapes)
    width_height = torch.tensor([[5.0, 6.0], [3.0, 3.0]]).view(1, 2, 1, 2)
    torch.testing.assert_close(locations, points[:, :, None, :, None, :] + (expected / width_height)[None, None])
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 6))
    boxes = torch.cat([points, torch.tensor([0.2, 0.4]).expand_as(points)], -1)
    locations, _ = attention.sampling_locations_and_weights(query, boxes, shapes)
    half_sizes = torch.tensor([0.1, 0.2])
    torch.testing.assert_close(locations, points[:, :, None, :, None, :] + (expected / 3 * half_sizes)[None, None])


def test_msdeformattn_ignores_values_at_padded_positions():
    torch.manual_seed(0)
    attention = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    with torch.no_grad():  # offsets that reach far, so the samples do land on padding
        attention.sampling_offsets.weight.normal_(0.0, 0.5)
        attention.attention_weights.weight.normal_(0.0, 0.5)
    shapes, query, inputs, points = _attention_inputs()
    padding = torch.zeros(2, inputs.shape[1], dtype=torch.bool)
    padding[1, 2::5] = True
    padding[1, 30:33] = True
    padding[0, -4:] = True
    changed = inputs.clone()
    changed[padding] = torch.randn(int(padding.sum()), 1) * 100

    start = _start_index(shapes)
    with torch.no_grad():
        before = attention(query, points, inputs, shapes, start, padding)
        after = attention(query, points, changed, shapes, start, padding)
        unmasked_before = attention(query, points, inputs, shapes, start)
        unmasked_after = attention(query, points, changed, shapes, start)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    assert (unmasked_after - unmasked_before).abs().max().item() > 1e-2  # the padded positions are sampled


def test_inverse_sigmoid_and_mlp():
    x = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    logits = inverse_sigmoid(x)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[1:4].sigmoid(), x[1:4])
    torch.testing.assert_close(logits[[0, 4]], torch.tensor([math.log(1e-5), -math.log(1e-5)]))
    mlp = MLP(8, 16, 4, 3)
    assert [layer.out_features for layer in mlp.layers] == [16, 16, 4]
    assert mlp(torch.randn(2, 5, 8)).shape == (2, 5, 4)


def test_reference_points_follow_the_valid_ratios():
    masks = [torch.zeros(1, 4, 6, dtype=torch.bool), torch.zeros(1, 2, 3, dtype=torch.bool)]
    masks[0][:, :, 3:] = True  # the image covers the left half of every level
    masks[1][:, :, 2:] = True  # (rounded up on the coarse level)
    valid = torch.stack([valid_ratios_of(mask) for mask in masks], 1)
    torch.testing.assert_close(valid, torch.tensor([[[0.5, 1.0], [2 / 3, 1.0]]]))
    shapes = torch.tensor([[4, 6], [2, 3]])
    references = encoder_reference_points(shapes, valid)
    assert references.shape == (1, 24 + 6, 2, 2)
    # pixel (row 1, column 2) of level 0: centre (2.5, 1.5) of the 3 x 4 image part, seen on each level
    image_point = torch.tensor([2.5 / 3, 1.5 / 4])
    torch.testing.assert_close(references[0, 1 * 6 + 2], image_point * valid[0])
    torch.testing.assert_close(scale_by_valid_ratios(image_point.view(1, 1, 2), valid)[0, 0], image_point * valid[0])
    box = torch.tensor([0.5, 0.5, 0.2, 0.4]).view(1, 1, 4)
    torch.testing.assert_close(scale_by_valid_ratios(box, valid)[0, 0], box[0] * torch.cat([valid, valid], -1)[0])


LEVEL_SIZES = [(12, 10), (6, 5), (3, 3), (2, 2)]
D_MODEL, N_QUERIES, N_DECODER = 64, 5, 3


def _transformer(seed=0):
    torch.manual_seed(seed)
    return DeformableTransformer(d_model=D_MODEL, nhead=8, num_encoder_layers=2, num_decoder_layers=N_DECODER,
                                 dim_feedforward=96, dropout=0.1, num_feature_levels=4, dec_n_points=2,
                                 enc_n_points=2)


def _transformer_inputs(seed=0):
    """Batch 2: the second image covers the top-left 2/3 x 1/2 of every level (rounded up)."""
    generator = torch.Generator().manual_seed(seed)
    srcs, masks, pos_embeds = [], [], []
    for height, width in LEVEL_SIZES:
        srcs.append(torch.randn(2, D_MODEL, height, width, generator=generator))
        pos_embeds.append(torch.randn(2, D_MODEL, height, width, generator=generator))
        mask = torch.zeros(2, height, width, dtype=torch.bool)
        mask[1, math.ceil(height * 2 / 3):] = True
        mask[1, :, math.ceil(width / 2):] = True
        masks.append(mask)
    query_embed = torch.randn(N_QUERIES, D_MODEL, generator=generator)
    tgt = torch.randn(2, N_QUERIES, D_MODEL, generator=generator)
    return srcs, masks, pos_embeds, query_embed, tgt


def test_transformer_shapes_and_references():
    model = _transformer().eval()
    srcs, masks, pos_embeds, query_embed, tgt = _transformer_inputs()
    with torch.no_grad():
        out = model(srcs, masks, pos_embeds, query_embed, tgt)
    assert out.hs.shape == (N_DECODER, 2, N_QUERIES, D_MODEL)
    assert out.init_reference.shape == (2, N_QUERIES, 2)
    assert out.inter_references.shape == (N_DECODER, 2, N_QUERIES, 2)
    assert [tuple(m.shape) for m in out.memory] == [(2, D_MODEL, h, w) for h, w in LEVEL_SIZES]
    assert torch.isfinite(out.hs).all()
    for references in (out.init_reference, out.inter_references):
        assert ((references > 0) & (references < 1)).all()
    # without refinement the references stay where the query positions put them
    torch.testing.assert_close(out.inter_references, out.init_reference.expand(N_DECODER, -1, -1, -1))
    torch.testing.assert_close(out.init_reference[0], model.reference_points(query_embed).sigmoid())
    torch.testing.assert_close(out.init_reference[1], out.init_reference[0])
    with pytest.raises(ValueError):
        model(srcs[:3], masks[:3], pos_embeds[:3], query_embed, tgt)


def test_transformer_iterative_box_refinement():
    model = _transformer().eval()
    torch.manual_seed(1)
    model.decoder.bbox_embed = torch.nn.ModuleList(MLP(D_MODEL, D_MODEL, 4, 3) for _ in range(N_DECODER))
    srcs, masks, pos_embeds, query_embed, tgt = _transformer_inputs()
    with torch.no_grad():
        out = model(srcs, masks, pos_embeds, query_embed, tgt)
        heads = model.decoder.bbox_embed
        # layer 0 moves the initial point and gives it a size; later layers move the box
        first = heads[0](out.hs[0])
        first[..., :2] += inverse_sigmoid(out.init_reference)
        expected = [first.sigmoid()]
        for layer in range(1, N_DECODER):
            expected.append((heads[layer](out.hs[layer]) + inverse_sigmoid(expected[-1])).sigmoid())
    assert out.inter_references.shape == (N_DECODER, 2, N_QUERIES, 4)
    torch.testing.assert_close(out.inter_references, torch.stack(expected))
    assert ((out.inter_references > 0) & (out.inter_references < 1)).all()
    for layer in range(1, N_DECODER):
        assert (out.inter_references[layer] - out.inter_references[layer - 1]).abs().max().item() > 1e-3


def test_transformer_gradients_reach_the_inputs():
    model = _transformer().train()
    model.decoder.bbox_embed = torch.nn.ModuleList(MLP(D_MODEL, D_MODEL, 4, 3) for _ in range(N_DECODER))
    srcs, masks, pos_embeds, query_embed, tgt = _transformer_inputs()
    for tensor in (*srcs, query_embed, tgt):
        tensor.requires_grad_()
    out = model(srcs, masks, pos_embeds, query_embed, tgt)
    assert not out.inter_references.requires_grad  # refined references are detached, layer by layer
    (out.hs.square().sum() + sum(m.square().sum() for m in out.memory) + out.init_reference.sum()).backward()
    for tensor in (*srcs, query_embed, tgt):
        assert tensor.grad is not None and tensor.grad.abs().sum().item() > 0
    # the offsets and weights learn from the first step (their zero-initialised weights pass no gradient
    # on to the positions yet, so level_embed only starts learning after that, as in Deformable DETR)
    for attention in (model.encoder.layers[0].self_attn, model.decoder.layers[-1].cross_attn):
        assert attention.sampling_offsets.weight.grad.abs().sum().item() > 0
        assert attention.attention_weights.weight.grad.abs().sum().item() > 0


def test_transformer_ignores_padded_src_values():
    model = _transformer().eval()
    srcs, masks, pos_embeds, query_embed, tgt = _transformer_inputs()
    changed = [src.clone() for src in srcs]
    for src, mask in zip(changed, masks):
        src.masked_scatter_(mask[:, None].expand_as(src), torch.randn(int(mask.sum()) * D_MODEL) * 50)
    with torch.no_grad():
        before = model(srcs, masks, pos_embeds, query_embed, tgt)
        after = model(changed, masks, pos_embeds, query_embed, tgt)
    for level_before, level_after, mask in zip(before.memory, after.memory, masks):
        kept = ~mask[:, None].expand_as(level_before)
        torch.testing.assert_close(level_after[kept], level_before[kept], atol=1e-5, rtol=0)
        assert (level_after[~kept] - level_before[~kept]).abs().max().item() > 1e-2  # padded memory does change
    torch.testing.assert_close(after.hs, before.hs, atol=1e-5, rtol=0)


def test_decoder_cross_attention_references_are_scaled_by_the_valid_ratios():
    model = _transformer().eval()
    model.decoder.bbox_embed = torch.nn.ModuleList(MLP(D_MODEL, D_MODEL, 4, 3) for _ in range(N_DECODER))
    srcs, masks, pos_embeds, query_embed, tgt = _transformer_inputs()
    seen = []
    for layer in model.decoder.layers:
        layer.cross_attn.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    with torch.no_grad():
        out = model(srcs, masks, pos_embeds, query_embed, tgt)
    # the second image covers ceil(2h/3) rows and ceil(w/2) columns of every level
    valid = torch.stack([torch.ones(4, 2),
                         torch.tensor([[math.ceil(w / 2) / w, math.ceil(h * 2 / 3) / h] for h, w in LEVEL_SIZES])])
    assert [tuple(r.shape) for r in seen] == [(2, N_QUERIES, 4, 2)] + [(2, N_QUERIES, 4, 4)] * (N_DECODER - 1)
    torch.testing.assert_close(seen[0], out.init_reference[:, :, None] * valid[:, None])
    for layer in range(1, N_DECODER):
        torch.testing.assert_close(seen[layer], out.inter_references[layer - 1][:, :, None] * valid.repeat(1, 1, 2)[:, None])
