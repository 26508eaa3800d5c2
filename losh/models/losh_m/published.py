"""MTTR's published files (mttr2021/MTTR: a `.pth.tar` whose "model_state_dict" is MTTR's state dict), and the
official LoSh code's (the same names), under LoSh-M's names.

Every MTTR tensor has one home here, by name alone (no reshapes): its Video Swin (3 stages), RoBERTa, text
projection, multimodal encoder and decoder, object queries, FPN spatial decoder and heads. The dims of the
config come from the tensors; the attention heads (not in any shape) from the base config.
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

FORMAT = "MTTR"
CONTAINER_KEY = "model_state_dict"
# tensors only MTTR's state dict has: how a file is recognised as MTTR's
SIGNATURE = ("vid_embed_proj.weight", "transformer.txt_proj.fc.weight", "obj_queries.weight")

# MTTR's name -> ours (the first pattern that matches)
_RENAMES: list[tuple[str, str]] = [
    (r"transformer\.text_encoder\.(.*)", r"text_encoder.model.\1"),
    (r"transformer\.txt_proj\.(fc|layer_norm)\.(weight|bias)", r"text_proj.\1.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.*)", r"encoder.layers.\1.attention.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.(linear[12]|norm[12])\.(weight|bias)", r"encoder.layers.\1.\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.(.*)", r"decoder.layers.\1.self_attention.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.multihead_attn\.(.*)", r"decoder.layers.\1.cross_attention.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(linear[12]|norm[123])\.(weight|bias)", r"decoder.layers.\1.\2.\3"),
    (r"transformer\.decoder\.norm\.(weight|bias)", r"decoder.norm.\1"),
    (r"obj_queries\.weight", r"decoder.queries.weight"),
    (r"vid_embed_proj\.(weight|bias)", r"video_proj.\1"),
    (r"spatial_decoder\.out_lay\.(weight|bias)", r"spatial_decoder.out_layer.\1"),
    (r"spatial_decoder\.((?:adapter|lay|gn)\d)\.(weight|bias)", r"spatial_decoder.\1.\2"),
    (r"instance_kernels_head\.layers\.(\d+)\.(weight|bias)", r"kernel_head.layers.\1.\2"),
    (r"is_referred_head\.(weight|bias)", r"is_referred_head.\1"),
]


def rename(key: str) -> list[str] | None:
    if key.startswith("backbone."):
        ours = swin_key(key[len("backbone."):], num_stages=3)
        return [f"backbone.{ours}"] if ours else None
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, key):
            return [re.sub(pattern, replacement, key)]
    return None


def convert(state: Mapping[str, Tensor], base: ModelConfig) -> tuple[Conversion, ModelConfig]:
    """MTTR's state dict -> (our tensors, the config of their dims on `base`)."""
    conversion = rename_all(state, rename, FORMAT)
    kernel_layers = count(state, r"instance_kernels_head\.layers\.(\d+)\.weight")
    if kernel_layers != 2:
        raise NotThisFormat(f"its kernel head has {kernel_layers} layers, MTTR's has 2")
    transformer = replace(
        base.transformer,
        d_model=shape(state, "vid_embed_proj.weight")[0],
        dim_feedforward=shape(state, "transformer.encoder.layers.0.linear1.weight")[0],
        num_encoder_layers=count(state, r"transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count(state, r"transformer\.decoder\.layers\.(\d+)\."),
        num_queries=shape(state, "obj_queries.weight")[0],
        mask_kernel_dim=shape(state, "instance_kernels_head.layers.1.weight")[0],
        text_conditioned_queries=False)
    config = replace(base, backbone=backbone_config(state, "backbone.", base.backbone, num_stages=3),
                     text=text_config(state, "transformer.text_encoder.", base.text), transformer=transformer)
    return conversion, config
