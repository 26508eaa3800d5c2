"""Sine position encodings: DETR's 2D one (the video tokens of MTTR and SgMg) and SgMg's 1D one (the words)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding_2d(padding_mask: Tensor, dim: int, temperature: float = 10000.0,
                              offset: float = 0.0) -> Tensor:
    """Normalised sine/cosine encoding of (y, x) positions, half the channels each.

    padding_mask: (N, h, w) bool, True on padded pixels (they do not count towards positions). Positions are
    (cumsum - offset) / (last + eps) * 2 pi: offset 0 is DETR's and MTTR's, 0.5 SgMg's (pixel centres).
    Returns (N, h, w, dim).
    """
    if dim % 4:
        raise ValueError(f"the 2D sine encoding needs a dim divisible by 4, got {dim}")
    not_mask = (~padding_mask).to(torch.float32)
    y_embed = not_mask.cumsum(1)
    x_embed = not_mask.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = (y_embed - offset) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed - offset) / (x_embed[:, :, -1:] + eps) * scale
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=padding_mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3)


def sine_position_encoding_1d(padding: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """SgMg's PositionEmbeddingSine1D(dim, normalize=True) of the words.

    padding (B, S) bool, True on padded words (they do not count towards positions) -> (B, S, dim),
    channels interleaved sin, cos, sin, ... of positions normalised to (0, 2 pi].
    """
    if dim % 2:
        raise ValueError(f"the 1D sine encoding needs an even dim, got {dim}")
    positions = (~padding).to(torch.float32).cumsum(1)
    positions = positions / (positions[:, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(dim, dtype=torch.float32, device=padding.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / dim)
    angles = positions[:, :, None] / dim_t
    return torch.stack((angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()), dim=3).flatten(2)
