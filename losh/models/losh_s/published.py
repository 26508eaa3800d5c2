"""SgMg's published files (bo-miao/SgMg: a `.pth` whose "model" is SgMg's state dict, RefCOCO pre-trained,
A2D-Sentences or Refer-YouTube-VOS) under LoSh-S's names.

Every SgMg tensor has a home here by name: its Video Swin (4 stages), RoBERTa with its pooler (the sentence
feature), text and sentence projections, input projections, the spectrum modulations before and after fusion
(`input_fft`, `input_fft_post` -> `scf.<level>.pre_modulation`, `.post_modulation`), its one fusion module
(shared by our four `scf.<level>.fusion`), the deformable transformer, queries, heads, dynamic mask head
(`controller` -> `mask_head.controller`) and MSO refinement. The attention heads come from the base config.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from torch import Tensor

from losh.models.shared.published import (
    Conversion,
    NotThisFormat,
    backbone_config,
    count,
    rename_all,
    shape,
    swin_key,
    text_config,
)
from losh.schemas.config import ModelConfig

FORMAT = "SgMg"
CONTAINER_KEY = "model"
SIGNATURE = ("fusion_module.multihead_attn.in_proj_weight", "input_fft.0.conv1.weight", "query_embed.weight")
_BACKBONE = "backbone.0.body."

_RENAMES: list[tuple[str, str]] = [
    (r"text_encoder\.text_backbone\.(.*)", r"text_encoder.model.\1"),
    (r"(text_proj|sentence_proj)\.(fc|layer_norm)\.(weight|bias)", r"\1.\2.\3"),
    (r"input_fft\.(\d+)\.(.*)", r"scf.\1.pre_modulation.\2"),
    (r"input_fft_post\.(\d+)\.(.*)", r"scf.\1.post_modulation.\2"),
    (r"controller\.layers\.(\d+)\.(weight|bias)", r"mask_head.controller.layers.\1.\2"),
    (r"input_proj\.(\d+)\.([01])\.(weight|bias)", r"input_proj.\1.\2.\3"),
    (r"query_embed\.weight", r"query_embed.weight"),
    (r"class_embed\.(\d+)\.(weight|bias)", r"class_embed.\1.\2"),
    (r"bbox_embed\.(\d+)\.layers\.(\d+)\.(weight|bias)", r"bbox_embed.\1.layers.\2.\3"),
    (r"transformer\.(level_embed|reference_points\.weight|reference_points\.bias)", r"transformer.\1"),
    (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(.*)", r"transformer.\1.layers.\2.\3"),
    (r"transformer\.decoder\.bbox_embed\.(\d+)\.layers\.(\d+)\.(weight|bias)",
     r"transformer.decoder.bbox_embed.\1.layers.\2.\3"),
    (r"mask_refine\.(conv[12]_1div[48])\.(weight|bias)", r"mask_refine.\1.\2"),
]


def renamer(levels: int):
    def rename(key: str) -> list[str] | None:
        if key.startswith(_BACKBONE):
            ours = swin_key(key[len(_BACKBONE):], num_stages=4)
            return [f"backbone.{ours}"] if ours else None
        if key.startswith("fusion_module."):    # one module in SgMg, shared by our levels
            return [f"scf.{level}.fusion.{key[len('fusion_module.'):]}" for level in range(levels)]
        for pattern, replacement in _RENAMES:
            if re.fullmatch(pattern, key):
                return [re.sub(pattern, replacement, key)]
        return None
    return rename


def convert(state: Mapping[str, Tensor], base: ModelConfig) -> tuple[Conversion, ModelConfig]:
    """SgMg's state dict -> (our tensors, the config of their dims on `base`)."""
    levels = shape(state, "transformer.level_embed")[0]
    conversion = rename_all(state, renamer(levels), FORMAT)
    if shape(state, "class_embed.0.weight")[0] != 1:
        raise NotThisFormat(f"its class head has {shape(state, 'class_embed.0.weight')[0]} classes: SgMg trained "
                            "with --binary (one referred-or-not class) is the one this model computes")
    if "text_encoder.text_backbone.pooler.dense.weight" not in state:
        raise NotThisFormat("it has no RoBERTa pooler (text_encoder.text_backbone.pooler.*), SgMg's sentence feature")
    heads = base.transformer.nheads
    points = {}
    for part, attention in (("encoder", "self_attn"), ("decoder", "cross_attn")):
        rows = shape(state, f"transformer.{part}.layers.0.{attention}.attention_weights.weight")[0]
        if rows % (heads * levels):
            raise NotThisFormat(f"its {part}'s deformable attention has {rows} weights, not a multiple of "
                                f"{heads} heads x {levels} levels (set transformer.nheads with --config)")
        points[part] = rows // (heads * levels)
    d_model = shape(state, "query_embed.weight")[1]
    transformer = replace(
        base.transformer, d_model=d_model, num_queries=shape(state, "query_embed.weight")[0],
        dim_feedforward=shape(state, "transformer.encoder.layers.0.linear1.weight")[0],
        num_encoder_layers=count(state, r"transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count(state, r"transformer\.decoder\.layers\.(\d+)\."),
        text_conditioned_queries=True)
    sgmg = replace(base.sgmg, num_feature_levels=levels, enc_points=points["encoder"], dec_points=points["decoder"],
                   box_refine=any(k.startswith("transformer.decoder.bbox_embed.") for k in state),
                   controller_layers=_dynamic_layers(state, d_model, base.sgmg.dynamic_channels,
                                                     base.sgmg.relative_coords),
                   sentence_feature="pooler")
    config = replace(base, backbone=backbone_config(state, _BACKBONE, base.backbone, num_stages=4),
                     text=text_config(state, "text_encoder.text_backbone.", base.text), transformer=transformer,
                     sgmg=sgmg)
    return conversion, config


def _dynamic_layers(state: Mapping[str, Tensor], in_channels: int, channels: int, relative_coords: bool) -> int:
    """How many dynamic 1x1 convolutions the controller's output parameterises: the first takes the mask
    features (and 2 coordinates), each later one `channels` inputs; every one has `channels` outputs and biases."""
    outputs = shape(state, "controller.layers.2.weight")[0]
    first = (in_channels + 2 * relative_coords) * channels + channels
    later, rest = divmod(outputs - first, channels * channels + channels)
    if rest or later < 0:
        raise NotThisFormat(f"its controller makes {outputs} parameters: not a stack of {channels}-channel dynamic "
                            f"convolutions on {in_channels} mask channels")
    return 1 + later
