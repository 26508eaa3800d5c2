"""Units of optical flow vectors, converted in one place.

A flow is stored in pixels of its own grid (flows/index.json: "pixels of the stored grid"); the loader
gives it in pixels of the stored frames, augmentation rescales it with the frames, and L_fbc needs it in
pixels of the feature map. Each of these is the same conversion: a displacement of one pixel of an
(h, w) grid is w'/w (x) and h'/h (y) pixels of an (h', w') grid covering the same image.
"""
from __future__ import annotations

import numpy as np
import torch


def vector_scale(from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[float, float]:
    """(x scale, y scale) that turns a displacement in pixels of `from_size` (h, w) into pixels of `to_size`."""
    return to_size[1] / from_size[1], to_size[0] / from_size[0]


def rescale_vectors(flow, from_size: tuple[int, int], to_size: tuple[int, int]):
    """Flow (..., 2, h, w), numpy or torch, x then y: its vectors converted from pixels of `from_size` to
    pixels of `to_size` (the field itself is not resampled)."""
    sx, sy = vector_scale(from_size, to_size)
    if isinstance(flow, torch.Tensor):   # Python scales: no host -> device copy
        return torch.cat((flow[..., :1, :, :] * sx, flow[..., 1:, :, :] * sy), dim=-3)
    return flow * np.array([sx, sy], dtype=np.float32).reshape(2, 1, 1)
