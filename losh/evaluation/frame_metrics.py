"""Evaluation metrics for referring video object segmentation, as plain functions on masks.

Two protocols (SPEC.md, "Metrics"):

* A2D-Sentences / JHMDB-Sentences, as MTTR evaluates them. One "image" per (sample, annotated
  frame) holds the one referred ground-truth mask. A method gives one or more scored masks per
  image; the highest-scoring one gives the image's IoU.
  - ``overall_iou``: total intersection / total union over all images.
  - ``mean_iou``: mean of the per-image IoUs.
  - ``precision@k`` (k = 0.5 ... 0.9): fraction of images whose IoU is strictly above k.
  - ``map``: COCO mask AP averaged over IoU 0.50:0.05:0.95 (``COCOeval(iouType='segm')``,
    ``stats[0]``) over *all* scored predictions, one ground-truth annotation per image. It needs pycocotools,
    imported when first used: where it is not installed, ``map`` is None and ``map_unavailable`` says why (the
    other metrics do not need it).
* DAVIS / YouTube-VOS style, on the same highest-scoring mask:
  - ``j``: region IoU; ``f``: boundary F-measure (DAVIS toolkit definition); ``jf``: their mean.

IoU is computed exactly, I / U, and defined as 1 when both masks are empty (U = 0). MTTR writes
(I + 1e-6) / (U + 1e-6) instead; that moves an IoU by less than 1e-6 but would let an IoU of
exactly 0.5 count for precision@0.5, which the strict "above k" rule here does not.

Images whose ground truth is empty (A2D: the referred instance is listed in the frame's annotation
but its mask holds no pixel; MTTR keeps such samples) are treated as MTTR's code treats them
(mttr2021/MTTR ``metrics.py``, ``create_gt_in_coco_format.py``): in the IoU, precision and J/F
metrics an empty prediction scores 1 and anything else 0 (MTTR: (0 + 1e-6) / (U + 1e-6)), the
union of the prediction adds to the overall union; in ``map`` the empty mask is a ground-truth
annotation of area 0 that no prediction can match (pycocotools gives an empty box IoU 0), so it
counts as a missed object and the image's predictions as false positives.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_KEYS: tuple[str, ...] = (
    "overall_iou",
    "mean_iou",
    "map",
    *(f"precision@{k}" for k in PRECISION_THRESHOLDS),
    "j",
    "f",
    "jf",
    "num_images",
)
_CATEGORY_ID = 1  # referring segmentation is class-agnostic: every mask is one category


@dataclass
class FramePrediction:
    """One evaluated image: its ground truth and the method's scored masks for it."""

    gt_mask: np.ndarray  # HxW bool
    pred_masks: np.ndarray  # KxHxW bool (K >= 1)
    scores: np.ndarray  # K floats


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two binary HxW masks; 1.0 when both are empty."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    _check_same_shape(pred, gt)
    intersection, union = _intersection_union(pred, gt)
    return _iou_from_counts(intersection, union)


def boundary_tolerance(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Boundary match tolerance in pixels, as the DAVIS toolkit sets it.

    A ``bound_th`` of 1 or more is a number of pixels; below 1 it is a fraction of the image
    diagonal, rounded up.
    """
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask, as DAVIS's ``seg2bmap``.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour;
    the last row and column compare only along the image edge, so the image border itself is
    not a boundary. (The DAVIS resizing option is not needed: masks are compared at full size.)
    """
    seg = _as_bool(mask)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def disk(radius: int) -> np.ndarray:
    """Disk structuring element {(y, x): x^2 + y^2 <= r^2}, as ``skimage.morphology.disk``.

    DAVIS dilates with this disk; OpenCV's MORPH_ELLIPSE is a slightly different digital
    ellipse, so the disk is built here to keep the same F values as the toolkit.
    """
    offsets = np.arange(-radius, radius + 1)
    ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
    return (xs**2 + ys**2 <= radius**2).astype(np.uint8)


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure between a predicted and a ground-truth binary mask.

    Boundary pixels of one mask count as matched when they lie within the tolerance (disk
    dilation of the other boundary); precision = matched predicted / predicted boundary pixels,
    recall = matched ground-truth / ground-truth boundary pixels, F = 2PR / (P + R).
    Both boundaries empty -> 1; exactly one empty -> 0.
    """
    pred, gt = _as_bool(pred), _as_bool(gt)
    _check_same_shape(pred, gt)
    pred_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    num_pred = int(pred_boundary.sum())
    num_gt = int(gt_boundary.sum())
    if num_pred == 0 and num_gt == 0:
        return 1.0
    if num_pred == 0 or num_gt == 0:
        return 0.0
    kernel = disk(boundary_tolerance(pred.shape, bound_th))
    pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
    precision = float((pred_boundary & gt_dilated).sum()) / num_pred
    recall = float((gt_boundary & pred_dilated).sum()) / num_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


class MetricAccumulator:
    """Streaming version of :func:`evaluate_frames`, fed one image at a time.

    Keeps the running intersection/union sums, the per-image IoU and F values and the RLE
    encodings needed for COCO AP, never the full masks.
    """

    def __init__(self, bound_th: float = 0.008) -> None:
        self.bound_th = bound_th
        self._coco = _pycocotools()            # None where pycocotools is not installed: no mAP
        self._total_intersection = 0
        self._total_union = 0
        self._ious: list[float] = []
        self._boundary_fs: list[float] = []
        self._coco_images: list[dict] = []
        self._coco_gt: list[dict] = []
        self._coco_predictions: list[dict] = []

    def __len__(self) -> int:
        return len(self._ious)

    def add(self, gt_mask: np.ndarray, pred_masks: np.ndarray, scores: np.ndarray | Sequence[float]) -> float:
        """Record one image; returns the IoU of its highest-scoring prediction."""
        gt = _as_bool(gt_mask)
        if gt.ndim != 2:
            raise ValueError(f"gt_mask must be HxW, got shape {gt.shape}")
        preds = _as_bool(pred_masks)
        if preds.ndim == 2:
            preds = preds[None]
        if preds.ndim != 3 or preds.shape[1:] != gt.shape or preds.shape[0] == 0:
            raise ValueError(f"pred_masks must be KxHxW with K >= 1 and HxW = {gt.shape}, got shape {preds.shape}")
        scores = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        if scores.shape != (preds.shape[0],):
            raise ValueError(f"expected {preds.shape[0]} scores, one per predicted mask, got shape {scores.shape}")

        best = preds[int(np.argmax(scores))]
        intersection, union = _intersection_union(best, gt)
        iou = _iou_from_counts(intersection, union)
        self._total_intersection += intersection
        self._total_union += union
        self._ious.append(iou)
        self._boundary_fs.append(boundary_f(best, gt, self.bound_th))

        if self._coco is None:
            return iou
        coco_mask = self._coco[0]
        # an empty ground truth stays in COCO, as in MTTR: a ground truth that no prediction matches
        image_id = len(self._coco_images) + 1  # COCOeval treats id 0 as "unmatched"
        height, width = gt.shape
        self._coco_images.append({"id": image_id, "height": height, "width": width})
        gt_rle = _encode(coco_mask, gt)
        self._coco_gt.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": _CATEGORY_ID,
                "segmentation": gt_rle,
                "area": float(coco_mask.area(gt_rle)),
                "bbox": coco_mask.toBbox(gt_rle).tolist(),
                "iscrowd": 0,
            }
        )
        for mask, score in zip(preds, scores):
            prediction = {"image_id": image_id, "category_id": _CATEGORY_ID, "segmentation": _encode(coco_mask, mask)}
            self._coco_predictions.append({**prediction, "score": float(score)})
        return iou

    def result(self) -> dict[str, float]:
        """All metrics as fractions in [0, 1] (``num_images`` as a count)."""
        if not self._ious:
            raise ValueError("no images to evaluate: add at least one (ground truth, predictions) pair first")
        ious = np.asarray(self._ious)
        boundary_fs = np.asarray(self._boundary_fs)
        overall = 1.0 if self._total_union == 0 else self._total_intersection / self._total_union
        metrics: dict[str, float] = {
            "overall_iou": float(overall),
            "mean_iou": float(ious.mean()),
            "map": self._coco_map() if self._coco is not None else None,
        }
        if self._coco is None:
            metrics["map_unavailable"] = MAP_NEEDS
        for k in PRECISION_THRESHOLDS:
            metrics[f"precision@{k}"] = float((ious > k).mean())
        j, f = float(ious.mean()), float(boundary_fs.mean())
        metrics.update({"j": j, "f": f, "jf": (j + f) / 2, "num_images": float(len(ious))})
        return metrics

    def _coco_map(self) -> float:
        if not self._coco_gt:
            return float("nan")
        _, COCO, COCOeval = self._coco
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):  # pycocotools prints progress and the summary table
            coco_gt = COCO()
            coco_gt.dataset = {
                "images": list(self._coco_images),
                "annotations": list(self._coco_gt),
                "categories": [{"id": _CATEGORY_ID, "name": "referred object"}],
            }
            coco_gt.createIndex()
            # loadRes adds fields to the dicts it is given: pass copies so result() can be repeated
            coco_predictions = coco_gt.loadRes([dict(p) for p in self._coco_predictions])
            coco_eval = COCOeval(coco_gt, coco_predictions, iouType="segm")
            coco_eval.params.useCats = 0  # as MTTR: categories are not predicted in referring segmentation
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.debug("pycocotools output:\n%s", captured.getvalue())
        return float(coco_eval.stats[0])


def evaluate_frames(frames: Sequence[FramePrediction], bound_th: float = 0.008) -> dict[str, float]:
    """All metrics over a list of images; see the module docstring for the definitions."""
    if len(frames) == 0:
        raise ValueError("no images to evaluate: evaluate_frames needs at least one FramePrediction")
    accumulator = MetricAccumulator(bound_th=bound_th)
    for frame in frames:
        accumulator.add(frame.gt_mask, frame.pred_masks, frame.scores)
    return accumulator.result()


def format_table(metrics: dict[str, float]) -> str:
    """Two-column text table; fractions are printed as percentages, ``num_images`` as a count."""
    extras = sorted(k for k, v in metrics.items() if k not in METRIC_KEYS and isinstance(v, (int, float)))
    # extras such as map_single_mask (a predictions folder); labels such as "split" are not table rows
    names = [k for k in METRIC_KEYS if k in metrics] + extras
    rows = []
    for name in names:
        value = metrics[name]
        if name == "num_images":
            text = f"{int(value)}"
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            text = "n/a"
        else:
            text = f"{100 * value:.2f}%"
        rows.append((name, text))
    name_width = max(len("metric"), *(len(n) for n, _ in rows))
    value_width = max(len("value"), *(len(t) for _, t in rows))
    lines = [f"{'metric':<{name_width}}  {'value':>{value_width}}", f"{'-' * name_width}  {'-' * value_width}"]
    lines += [f"{name:<{name_width}}  {text:>{value_width}}" for name, text in rows]
    return "\n".join(lines)


def _as_bool(mask: np.ndarray) -> np.ndarray:
    """Binary view of a mask given as bool, 0/1 integers or floats (non-zero = foreground)."""
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"masks must be HxW of the same shape, got {pred.shape} and {gt.shape}")


def _intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def _iou_from_counts(intersection: int, union: int) -> float:
    return 1.0 if union == 0 else intersection / union


def _encode(coco_mask, mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary HxW mask (pycocotools wants Fortran-ordered uint8)."""
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


MAP_NEEDS = "mAP needs pycocotools, which is not installed (pip install pycocotools)"


def _pycocotools():
    """(mask, COCO, COCOeval) of pycocotools, or None (with a warning, once) where it is not installed."""
    try:
        from pycocotools import mask
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        warnings.warn(f"{MAP_NEEDS}; the other metrics are computed", stacklevel=3)
        return None
    return mask, COCO, COCOeval
