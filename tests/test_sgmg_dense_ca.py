"""LoSh-S's long-short cross-attention in the paper's dense form (`sgmg.long_short_attention` "dense"): the layer
against a hand computation, the pathways it connects, the model trained with it, and the default deformable
model's weights names left as they were (published files convert onto them)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losh.models.losh_s.deformable_transformer import (
    DeformableEncoderLayer,
    LongShortDeformableEncoder,
    encoder_reference_points,
)
from losh.models.losh_s.dense_cross_attention import DenseCrossAttentionLayer
from losh.models.registry import build_model
from losh.schemas.config import ConfigError, ModelConfig, with_overrides
from losh.schemas.presets import get_config

LONG = ["the big red circle is moving to the left"]
SHORT = ["the big red circle"]
OTHER_SHORT = ["a purple dog"]


def _dense_config(spec: str = "tiny-s", **overrides) -> ModelConfig:
    return with_overrides(get_config(spec), {"sgmg.long_short_attention": "dense", **overrides})


# ------------------------------------------------------------------------------ 1. the layer by hand

def _by_hand(layer: DenseCrossAttentionLayer, src, pos, source, padding):
    """Plain matmuls and a softmax per head, padded keys at -inf; then residual, norm1, ReLU FFN, norm2."""
    n, length, d = src.shape
    heads, width = layer.n_heads, d // layer.n_heads
    q = (src + pos) @ layer.query_proj.weight.T + layer.query_proj.bias
    k = (source + pos) @ layer.key_proj.weight.T + layer.key_proj.bias
    v = source @ layer.value_proj.weight.T + layer.value_proj.bias
    per_head = []
    for h in range(heads):
        part = slice(h * width, (h + 1) * width)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(width)       # (N, S_q, S_k)
        scores = scores.masked_fill(padding[:, None, :], float("-inf"))
        per_head.append(scores.softmax(-1) @ v[..., part])
    attended = torch.cat(per_head, -1) @ layer.output_proj.weight.T + layer.output_proj.bias
    x = F.layer_norm(src + attended, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    hidden = torch.relu(x @ layer.linear1.weight.T + layer.linear1.bias)
    x = x + hidden @ layer.linear2.weight.T + layer.linear2.bias
    return F.layer_norm(x, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def test_dense_layer_is_multi_head_attention_to_the_source_with_padded_keys_ignored():
    torch.manual_seed(0)
    layer = DenseCrossAttentionLayer(d_model=8, n_heads=2, dim_feedforward=12, dropout=0.0).double().eval()
    with torch.no_grad():   # biases away from their zero start, so the hand computation checks them too
        for parameter in layer.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    generator = torch.Generator().manual_seed(1)
    src, pos, source = (torch.randn(1, 6, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    padding = torch.tensor([[False, False, False, False, True, False]])
    out = layer(src, pos, padding_mask=padding, source=source)
    expected = _by_hand(layer, src, pos, source, padding)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)

    moved = source.clone()
    moved[0, 4] += 100.0                                          # the padded key/value: nothing reads it
    torch.testing.assert_close(layer(src, pos, padding_mask=padding, source=moved), out, atol=1e-12, rtol=0)
    moved[0, 3] += 1.0                                            # a real one: every query reads it
    assert (layer(src, pos, padding_mask=padding, source=moved) - out).abs().amax(-1).gt(1e-6).all()

    unmasked = _by_hand(layer, src, pos, source, torch.zeros_like(padding))
    torch.testing.assert_close(layer(src, pos, source=source), unmasked, atol=1e-12, rtol=0)   # no mask given
    own = _by_hand(layer, src, pos, src, padding)                 # no source: the tokens attend to themselves
    torch.testing.assert_close(layer(src, pos, padding_mask=padding), own, atol=1e-12, rtol=0)


def test_dense_layer_takes_the_deformable_layers_dims():
    deformable = DeformableEncoderLayer(d_model=32, dim_feedforward=48, dropout=0.2, n_levels=2, n_heads=4)
    dense = DenseCrossAttentionLayer.like(deformable)
    assert (dense.n_heads, dense.query_proj.in_features, dense.linear1.out_features, dense.dropout1.p) == (4, 32, 48,
                                                                                                          0.2)
    with pytest.raises(ValueError, match="divisible"):
        DenseCrossAttentionLayer(d_model=10, n_heads=4)


# ------------------------------------------------------------------------------ 2. the pathways it connects

SHAPES = ((4, 4), (2, 2))     # two levels of one frame: 20 tokens


def _encoder(cross_attention: str, attention: str = "dense") -> LongShortDeformableEncoder:
    torch.manual_seed(0)
    layer = DeformableEncoderLayer(d_model=16, dim_feedforward=24, dropout=0.0, n_levels=2, n_heads=2, n_points=2)
    return LongShortDeformableEncoder(layer, 4, cross_attention, attention).eval()


def _grid(batch: int = 2):
    """Tokens of both pathways on SHAPES; the second frame's last column of the 4 x 4 level and of the 2 x 2 level
    is padding."""
    generator = torch.Generator().manual_seed(2)
    tokens = sum(h * w for h, w in SHAPES)
    long, short, pos = (torch.randn(batch, tokens, 16, generator=generator) for _ in range(3))
    spatial_shapes = torch.tensor(SHAPES)
    level_start_index = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
    masks = [torch.zeros(batch, h, w, dtype=torch.bool) for h, w in SHAPES]
    for mask in masks:
        mask[1, :, -1] = True
    padding = torch.cat([mask.flatten(1) for mask in masks], 1)
    valid_ratios = torch.stack([torch.stack([(~m[:, 0, :]).sum(1) / m.shape[2], (~m[:, :, 0]).sum(1) / m.shape[1]],
                                            -1) for m in masks], 1).float()
    return long, short, (spatial_shapes, level_start_index, valid_ratios, pos, padding)


def test_long_pathway_reads_the_short_tokens_through_dense_layers_and_not_without_cross_attention():
    long, short, grid = _grid()
    padding = grid[-1]
    changed = short + 0.5 * torch.randn(short.shape, generator=torch.Generator().manual_seed(3))
    only_padding = short.clone()
    only_padding[padding] += 10.0
    with torch.no_grad():
        dense = _encoder("long_from_short")
        long_a, short_a = dense(long, short, *grid)
        long_b, short_b = dense(long, changed, *grid)
        assert (long_a - long_b).abs().max() > 1e-2                           # the long pathway reads the short one
        # a padded short token is never a key of the dense layers (nor a value of the shared deformable ones)
        torch.testing.assert_close(dense(long, only_padding, *grid)[0], long_a, atol=1e-5, rtol=0)

        none = _encoder("none")
        assert not none.long_cross and not none.short_cross
        torch.testing.assert_close(none(long, short, *grid)[0], none(long, changed, *grid)[0], atol=0, rtol=0)

        inverse = _encoder("short_from_long")                                  # the other direction
        assert sorted(inverse.short_cross) == ["1", "3"] and not inverse.long_cross
        assert all(isinstance(layer, DenseCrossAttentionLayer) for layer in inverse.short_cross.values())
        torch.testing.assert_close(inverse(long, short, *grid)[0], inverse(long, changed, *grid)[0], atol=0, rtol=0)
        assert (inverse(long, short, *grid)[1] - inverse(long + 0.5, short, *grid)[1]).abs().max() > 1e-2


def test_without_short_pathway_a_dense_layer_attends_to_the_long_tokens():
    """Inference with the long pathway alone: the shared layers, and each CA layer with the long tokens as its
    keys and values, as the deformable CA layer then samples the long tokens."""
    long, _, grid = _grid()
    spatial_shapes, level_start_index, valid_ratios, pos, padding = grid
    encoder = _encoder("long_from_short")
    with torch.no_grad():
        out, short_out = encoder(long, None, *grid)
        assert short_out is None
        references = encoder_reference_points(spatial_shapes, valid_ratios)
        expected = long
        for index, layer in enumerate(encoder.layers):
            layer = encoder.long_cross[str(index)] if str(index) in encoder.long_cross else layer
            expected = layer(expected, pos, references, spatial_shapes, level_start_index, padding)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert isinstance(encoder.long_cross["1"], DenseCrossAttentionLayer)


# ------------------------------------------------------------------------------ 3. the model with it

def test_config_switch_is_validated_losh_s_takes_the_papers_form():
    """losh-s: the paper's dense form (measured the better one); tiny-s and SgMg's own default: deformable."""
    assert get_config("tiny-s").sgmg.long_short_attention == "deformable"
    assert get_config("losh-s").sgmg.long_short_attention == "dense"
    assert get_config("sgmg").sgmg.long_short_attention == "deformable"
    assert _dense_config().sgmg.long_short_attention == "dense"
    with pytest.raises(ConfigError, match="sgmg.long_short_attention"):
        with_overrides(get_config("tiny-s"), {"sgmg.long_short_attention": "sparse"})
    saved = _dense_config().to_dict()
    assert ModelConfig.from_dict(saved) == _dense_config()
    del saved["sgmg"]["long_short_attention"]                    # a config written before the switch existed
    assert ModelConfig.from_dict(saved).sgmg.long_short_attention == "deformable"


def test_tiny_s_with_dense_cross_attention_trains_and_infers():
    torch.manual_seed(0)
    model = build_model(_dense_config()).train()
    cross = model.transformer.encoder.long_cross
    assert sorted(cross) == ["1", "3"] and not model.transformer.encoder.short_cross
    assert all(isinstance(layer, DenseCrossAttentionLayer) for layer in cross.values())
    frames = torch.randn(1, 3, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    outputs = model(frames, LONG, SHORT, annotated_index=1)
    assert outputs["long"]["pred_masks"].shape[-2:] == (48, 64) and "short" in outputs
    loss = sum(outputs[p][k].float().square().mean() for p in ("long", "short")
               for k in ("pred_logits", "pred_boxes", "pred_masks", "pred_masks_low"))
    loss.backward()
    for name, parameter in cross.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        # the key bias adds one constant to every score of a query: softmax cancels it, its gradient is 0
        if name.split(".", 1)[1] != "key_proj.bias":
            assert parameter.grad.abs().sum() > 0, name

    model.eval()
    with_short = [model.infer(frames, LONG, short, annotated_index=1)["pred_masks"] for short in (SHORT, OTHER_SHORT)]
    assert (with_short[0] - with_short[1]).abs().max() > 1e-4     # the short text reaches the long pathway
    model.config = with_overrides(model.config, {"inference_short_pathway": "none"})
    alone = model.infer(frames, LONG, SHORT, annotated_index=1)
    assert torch.isfinite(alone["pred_masks"]).all()


# ------------------------------------------------------------------------------ 4. the default's weights names

def _encoder_keys(prefix: str, indices) -> set[str]:
    deformable = ("self_attn.sampling_offsets", "self_attn.attention_weights", "self_attn.value_proj",
                  "self_attn.output_proj", "norm1", "linear1", "linear2", "norm2")
    return {f"transformer.encoder.{prefix}.{i}.{part}.{kind}" for i in indices for part in deformable
            for kind in ("weight", "bias")}


def test_deformable_default_keeps_its_state_dict_keys_and_dense_changes_only_the_cross_layers():
    torch.manual_seed(0)
    deformable = build_model(get_config("tiny-s")).state_dict()
    encoder = {k for k in deformable if k.startswith("transformer.encoder.")}
    assert encoder == _encoder_keys("layers", range(4)) | _encoder_keys("long_cross", (1, 3))
    assert len(deformable) == 483
    torch.manual_seed(0)
    dense = build_model(_dense_config()).state_dict()
    outside = lambda keys: {k for k in keys if not k.startswith("transformer.encoder.long_cross.")}   # noqa: E731
    assert outside(dense) == outside(deformable)
    dense_parts = ("query_proj", "key_proj", "value_proj", "output_proj", "norm1", "linear1", "linear2", "norm2")
    assert set(dense) - outside(dense) == {f"transformer.encoder.long_cross.{i}.{part}.{kind}" for i in (1, 3)
                                           for part in dense_parts for kind in ("weight", "bias")}
