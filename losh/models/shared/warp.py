"""Backward warping of feature maps by optical flow (grid_sample), as L_fbc needs it.

Flow convention (OpenCV Farneback, `calcOpticalFlowFarneback(prev=frame_k, next=frame_k+t)`):
    frame_k(y, x) ~ frame_k+t(y + flow[1, y, x], x + flow[0, y, x])
so the features of frame k+t warped onto frame k are f_k+t sampled at (x + u, y + v).

Coordinates follow the pixel-centre convention of `align_corners=False`: pixel i of a map of width w
covers [i, i + 1) and has its centre at i + 0.5, so a map resized from width W to w maps frame
pixel centres linearly onto feature pixel centres and displacements scale by w / W.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losh.schemas.flow_units import rescale_vectors


def resize_flow(flow: Tensor, size: tuple[int, int], frame_size: tuple[int, int] | None = None) -> Tensor:
    """Flow (N, 2, hf, wf) resampled to `size` (h, w), vectors converted to pixels of that grid.

    `frame_size` (H, W): the size of the frames whose pixels the vectors are measured in; by default
    the flow's own grid (hf, wf). Downsampling averages the flow over each target pixel (area),
    upsampling interpolates it bilinearly.
    """
    h, w = size
    hf, wf = flow.shape[-2:]
    frame_h, frame_w = frame_size if frame_size is not None else (hf, wf)
    if (hf, wf) != (h, w):
        mode = "area" if hf >= h and wf >= w else "bilinear"
        flow = F.interpolate(flow, size=(h, w), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return rescale_vectors(flow, (frame_h, frame_w), (h, w))


def warp_by_flow(source: Tensor, flow: Tensor, source_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Samples `source` (N, C, h, w) at (x + u, y + v) for the flow (N, 2, h, w) in pixels of this grid.

    Returns (warped (N, C, h, w), valid (N, 1, h, w) bool): a pixel is valid when its bilinear
    sample uses only pixels inside the map (and inside `source_valid`, (N, 1, h, w), when given).
    """
    n, _, h, w = source.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=source.dtype, device=source.device),
                            torch.arange(w, dtype=source.dtype, device=source.device), indexing="ij")
    sample_x = xs + flow[:, 0]
    sample_y = ys + flow[:, 1]
    grid = torch.stack(((2 * sample_x + 1) / w - 1, (2 * sample_y + 1) / h - 1), dim=-1)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    content = torch.ones_like(source[:, :1]) if source_valid is None else source_valid.to(source.dtype)
    coverage = F.grid_sample(content, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped, coverage > 1 - 1e-4
