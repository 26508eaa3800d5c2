"""One optical flow: Farneback on two stored frames, resized to the stored grid, encoded for storage.

Every flow of `losh compute-flows` (and of `--verify`'s recomputation) goes through these functions,
so what is stored is exactly: encode(to_grid(farneback(gray(frame_k), gray(frame_k+t)))).
"""
from __future__ import annotations

import cv2
import numpy as np

from losh.schemas.flow_units import vector_scale
from losh.schemas.flows import FarnebackParams, FlowParams


def gray_from_bgr(frame_bgr: np.ndarray) -> np.ndarray:
    """(h, w) uint8 luma; equal to cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) of the same frame in RGB."""
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)


def farneback(prev_gray: np.ndarray, next_gray: np.ndarray, params: FarnebackParams = FarnebackParams()) -> np.ndarray:
    """(h, w, 2) float32 flow with prev(y, x) ~= next(y + flow[y, x, 1], x + flow[y, x, 0])."""
    p = params
    return cv2.calcOpticalFlowFarneback(prev_gray, next_gray, None, p.pyr_scale, p.levels, p.winsize, p.iterations,
                                        p.poly_n, p.poly_sigma, p.flags)


def to_grid(flow: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(2, gh, gw) float32: the (h, w, 2) flow area-averaged onto the grid, vectors in grid pixels."""
    h, w = flow.shape[:2]
    gh, gw = grid
    if (gh, gw) != (h, w):
        flow = cv2.resize(flow, (gw, gh), interpolation=cv2.INTER_AREA)
        sx, sy = vector_scale((h, w), (gh, gw))
        flow[..., 0] *= sx
        flow[..., 1] *= sy
    return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)


def encode(flow: np.ndarray, params: FlowParams) -> np.ndarray:
    """float32 flow -> stored values: rounded to multiples of quant_step (when set), cast to dtype."""
    if params.quant_step is not None:
        step = np.float32(params.quant_step)
        flow = np.rint(flow / step) * step
    return flow.astype(params.dtype)


def hflip_flows(flows: np.ndarray) -> np.ndarray:
    """Flows of horizontally mirrored frames, for (..., 2, h, w) flows: mirror the field, negate x."""
    flipped = flows[..., ::-1].copy()
    flipped[..., 0, :, :] *= -1
    return flipped
