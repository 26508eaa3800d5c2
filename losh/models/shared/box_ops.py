"""Box utilities (DETR's, as SgMg uses them): format conversions, pairwise (G)IoU, boxes of masks.

Boxes are (x0, y0, x1, y1) ("xyxy") or (cx, cy, w, h) ("cxcywh"). As in SgMg, IoU and GIoU carry a
1e-6 in numerator and denominator, so degenerate (zero-area) boxes give finite values: two identical
points have IoU 1 instead of DETR's NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (iou (N, M), union (N, M))."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2 - inter
    return (inter + EPS) / (union + EPS), union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU (https://giou.stanford.edu/) of (N, 4) and (M, 4) xyxy boxes -> (N, M) in [-1, 1].

    Raises ValueError on boxes with x1 < x0 or y1 < y0 (they give meaningless values).
    """
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not (boxes[:, 2:] >= boxes[:, :2]).all():
            raise ValueError(f"{name} has boxes with x1 < x0 or y1 < y0: {boxes}")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union + EPS) / (enclosing + EPS)


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of (..., 4) and (..., 4) xyxy boxes, broadcast against each other -> (...). No check of the boxes (the
    losses' and the matcher's are well formed: predictions are sigmoid (cx, cy, w, h), targets come from masks), so
    that nothing is read back from the device."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = (inter + EPS) / (union + EPS)
    outer = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    enclosing = outer[..., 0] * outer[..., 1]
    return iou - (enclosing - union + EPS) / (enclosing + EPS)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """(N, H, W) bool or float masks (non-zero = inside) -> (N, 4) float xyxy in pixels.

    torchvision's and SgMg's data sets' convention: x1, y1 are the LAST foreground column and row
    (the max index, not + 1), so a one-pixel mask has zero width. Empty masks give (0, 0, 0, 0),
    as SgMg's data sets write for frames without the object.
    """
    n, h, w = masks.shape
    inside = masks != 0
    rows, cols = inside.any(dim=2), inside.any(dim=1)  # (N, H), (N, W)
    row_index = torch.arange(h, device=masks.device)
    col_index = torch.arange(w, device=masks.device)
    x0 = torch.where(cols, col_index, w).min(dim=1).values
    x1 = torch.where(cols, col_index, -1).max(dim=1).values
    y0 = torch.where(rows, row_index, h).min(dim=1).values
    y1 = torch.where(rows, row_index, -1).max(dim=1).values
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return torch.where(cols.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))


def normalised_cxcywh_from_masks(masks: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """(N, H, W) masks -> (N, 4) cxcywh divided by (W, H, W, H) of `size` (H, W), default the masks'.

    The box targets of a mask-only data set (SgMg: boxes of the masks, then its Normalize transform).
    With the max-index convention a full-width mask has w = (W - 1) / W. Empty masks give zeros.
    """
    h, w = size if size is not None else masks.shape[-2:]
    cx, cy, bw, bh = box_xyxy_to_cxcywh(masks_to_boxes(masks)).unbind(-1)
    return torch.stack([cx / w, cy / h, bw / w, bh / h], dim=-1)      # Python divisors: nothing to copy to the GPU
