"""Video-level J and F: per referring expression, and the DAVIS-2017 "unsupervised" protocol that
Refer-DAVIS17 is scored with.

Per frame, J and F are the DAVIS toolkit's (davisvideochallenge/davis2017-evaluation,
``davis2017/metrics.py``; :func:`losh.evaluation.frame_metrics.mask_iou` and
:func:`losh.evaluation.frame_metrics.boundary_f` agree
with it when there are no void pixels):

* J = |P & G| / |P | G| over the non-void pixels; 1 when that union is empty (both masks empty).
* F = boundary F-measure of P & ~void against G & ~void (void pixels are cut from both masks
  before their boundaries are taken); both boundaries empty -> 1, exactly one empty -> 0.

Refer-DAVIS17, as ReferFormer (wjn922/ReferFormer ``inference_davis.py``, ``eval_davis.py``) and
the methods following it score it: each of the four annotators' expression sets is one
submission. The masks predicted for one sequence's expressions are composed into one label map per
frame (:func:`compose_label_maps`), and the toolkit's unsupervised task scores those maps
(:func:`davis_unsupervised_sequence`, :func:`davis_unsupervised`). The reported figure is the mean
of the four sets' figures (:class:`JFAccumulator` with one subset per set).

Toolkit rules followed here (``davis2017/evaluation.py``, ``davis.py``, ``results.py``):

* The unsupervised task scores EVERY annotated frame. Only the semi-supervised task drops the
  first and last frame (``all_gt_masks[:, 1:-1]`` sits under ``if self.task == 'semi-supervised'``).
* Ground-truth objects are ids 1..max(first frame's labels), 255 being void; predicted objects are
  ids 1..max(label over all frames), at most 20. A missing id is an empty object.
* Fewer predicted than ground-truth objects: the predictions are padded with empty objects.
* Predicted objects are matched to ground-truth objects by a maximum-score assignment on the
  per-pair mean over frames of (J + F) / 2; each ground-truth object keeps its matched pair's J, F.
* J-Mean / F-Mean: mean over all ground-truth objects of all sequences of the per-object frame
  mean; J&F-Mean = (J-Mean + F-Mean) / 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment  # the toolkit's own solver

from losh.evaluation.frame_metrics import boundary_tolerance, disk, seg2bmap

VOID_LABEL = 255
MAX_PROPOSALS = 20  # the toolkit's max_n_proposals for the unsupervised task


def frame_j_f(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> tuple[float, float]:
    """(J, F) of one frame's binary HxW masks, void pixels excluded as the DAVIS toolkit does."""
    if np.shape(pred) != np.shape(gt) or np.ndim(gt) != 2:
        raise ValueError(f"masks must be HxW of the same shape, got {np.shape(pred)} and {np.shape(gt)}")
    void = None if void is None else _frames_void(void, gt, 2)[0]
    j, f = _frame_pairs(_as_bool(pred)[None], _as_bool(gt)[None], void, _kernel(np.shape(gt), bound_th))
    return float(j[0, 0]), float(f[0, 0])


def expression_j_f(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> tuple[float, float]:
    """Mean over frames of J and of F for one expression: pred / gt are (T, H, W) binary masks over
    its annotated frames, void an optional (T, H, W) mask of pixels left out of both."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[0] == 0:
        raise ValueError(f"pred and gt must be (T, H, W) with T >= 1 and the same shape, got {pred.shape} and {gt.shape}")
    void = _frames_void(void, gt, 3)
    kernel = _kernel(gt.shape[1:], bound_th)
    per_frame = [_frame_pairs(pred[t][None], gt[t][None], None if void is None else void[t], kernel) for t in range(len(gt))]
    return float(np.mean([j[0, 0] for j, _ in per_frame])), float(np.mean([f[0, 0] for _, f in per_frame]))


def compose_label_maps(object_masks: Mapping[int, np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """One (T, H, W) uint8 label map from per-object (T, H, W) masks or probabilities, keyed by object id.

    ReferFormer's rule (``inference_davis.py``): probabilities below 0.5 are zeroed, a constant
    0.1 background is stacked in front and the argmax picks the label. That is: a pixel is
    background unless some object reaches ``threshold``; otherwise it takes the object of highest
    probability, the smallest id on a tie (so with binary masks, overlaps go to the smallest id).
    """
    if not object_masks:
        raise ValueError("compose_label_maps needs at least one object mask")
    ids = sorted(object_masks)
    if ids[0] < 1 or ids[-1] >= VOID_LABEL:
        raise ValueError(f"object ids must lie in 1..{VOID_LABEL - 1} (0 is background, {VOID_LABEL} void), got {ids}")
    stacked = np.stack([np.asarray(object_masks[i], dtype=np.float32) for i in ids])  # bool -> 0/1
    if stacked.ndim != 4:
        raise ValueError(f"object masks must be (T, H, W) and of one shape, got {stacked.shape[1:]}")
    best = stacked.argmax(axis=0)  # first maximum: the smallest id wins a tie
    labels = np.asarray(ids, dtype=np.uint8)[best]
    labels[stacked.max(axis=0) < threshold] = 0
    return labels


def davis_unsupervised_sequence(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = 0.008,
    max_proposals: int = MAX_PROPOSALS,
) -> list[tuple[int, float, float]]:
    """(ground-truth id, J, F) for each ground-truth object of one sequence, the toolkit's way.

    pred_labels / gt_labels: (T, H, W) integer label maps over the annotated frames (0 background).
    Pixels labelled 255 in gt_labels are void, as are those set in ``void`` when given.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape or gt_labels.ndim != 3 or gt_labels.shape[0] == 0:
        raise ValueError(
            f"label maps must be (T, H, W) with T >= 1 and the same shape, got {pred_labels.shape} and {gt_labels.shape}"
        )
    gt_void = gt_labels == VOID_LABEL
    gt_clean = np.where(gt_void, 0, gt_labels)
    if void is not None:
        gt_void = gt_void | _frames_void(void, gt_labels, 3)
    num_gt = int(gt_clean[0].max())  # the toolkit counts objects on the first frame only
    num_pred = int(pred_labels.max())
    if num_pred > max_proposals:
        raise ValueError(f"prediction holds label {num_pred}, above the {max_proposals} proposals the toolkit allows")
    if num_gt == 0:
        return []
    gt_ids = np.arange(1, num_gt + 1)[:, None, None]
    # padding: with fewer predictions than objects, the missing ones are empty masks
    pred_ids = np.arange(1, max(num_pred, num_gt) + 1)[:, None, None]
    kernel = _kernel(gt_labels.shape[1:], bound_th)
    j = np.zeros((len(pred_ids), num_gt, len(gt_labels)))  # (prediction, ground truth, frame)
    f = np.zeros_like(j)
    for t in range(len(gt_labels)):  # frame by frame: 20 proposals of a whole 480p sequence would not fit in memory
        j[:, :, t], f[:, :, t] = _frame_pairs(pred_labels[t] == pred_ids, gt_clean[t] == gt_ids, gt_void[t], kernel)
    score = (j.mean(axis=2) + f.mean(axis=2)) / 2
    pred_rows, gt_cols = linear_sum_assignment(-score)
    matched = dict(zip(gt_cols.tolist(), pred_rows.tolist()))
    return [
        (g + 1, float(j[matched[g], g].mean()), float(f[matched[g], g].mean()))
        for g in range(num_gt)
    ]


def davis_unsupervised(
    sequences: Mapping[str, tuple[np.ndarray, np.ndarray]],
    accumulator: JFAccumulator | None = None,
    subset: str = "",
    bound_th: float = 0.008,
) -> JFAccumulator:
    """Scores {sequence: (pred_labels, gt_labels)} and adds each ground-truth object as one entry
    (key ``<sequence>_<id>``) under ``subset``; ``result()`` then gives the toolkit's J-Mean,
    F-Mean and J&F-Mean (one subset), or the mean over expression sets (one subset per set)."""
    accumulator = JFAccumulator() if accumulator is None else accumulator
    for name, (pred_labels, gt_labels) in sequences.items():
        for gt_id, j, f in davis_unsupervised_sequence(pred_labels, gt_labels, bound_th=bound_th):
            accumulator.add(f"{name}_{gt_id}", j, f, subset=subset)
    return accumulator


class JFAccumulator:
    """Per-entry (expression or object) J and F, grouped in subsets (e.g. Refer-DAVIS17's four
    annotators' expression sets). Values are fractions in [0, 1], as MetricAccumulator reports."""

    def __init__(self) -> None:
        self._subsets: dict[str, dict[str, tuple[float, float]]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._subsets.values())

    def add(self, key: str, j: float, f: float, subset: str = "") -> None:
        entries = self._subsets.setdefault(subset, {})
        if key in entries:
            raise ValueError(f"entry {key!r} was already added to subset {subset!r}")
        for name, value in (("J", j), ("F", f)):
            if not 0.0 <= value <= 1.0:  # also catches NaN; percentages would silently skew the means
                raise ValueError(f"{name} of {key!r} must be a fraction in [0, 1], got {value}")
        entries[key] = (float(j), float(f))

    def result(self) -> dict:
        """{"J", "F", "J&F", "expressions"}; with several subsets, also "subsets" (each with the same
        fields) and the top-level J, F, J&F are the means of the subsets' figures."""
        if not self._subsets:
            raise ValueError("no entries to evaluate: add at least one (key, J, F) first")
        per_subset = {name: _summary(entries.values()) for name, entries in self._subsets.items()}
        if len(per_subset) == 1:
            return next(iter(per_subset.values()))
        # the field reports the mean over expression sets, not the pooled mean over all entries
        j = float(np.mean([s["J"] for s in per_subset.values()]))
        f = float(np.mean([s["F"] for s in per_subset.values()]))
        return {"J": j, "F": f, "J&F": (j + f) / 2, "expressions": len(self), "subsets": per_subset}


def _summary(values: Iterable[tuple[float, float]]) -> dict:
    pairs = np.asarray(list(values), dtype=np.float64)
    j, f = float(pairs[:, 0].mean()), float(pairs[:, 1].mean())
    return {"J": j, "F": f, "J&F": (j + f) / 2, "expressions": len(pairs)}


def _kernel(shape: tuple[int, ...], bound_th: float) -> np.ndarray:
    return disk(boundary_tolerance((int(shape[0]), int(shape[1])), bound_th))


def _frame_pairs(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(P, G) J and F of every (prediction, ground truth) pair of one frame: pred (P, H, W) and
    gt (G, H, W) bool, void (H, W) or None. Each mask's boundary is dilated once, not once per pair."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    return _pairwise_j(pred, gt), _pairwise_f(pred, gt, kernel)


def _pairwise_j(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    # float32 counts are exact up to 2^24 pixels, far above any frame size here
    pred_flat = pred.reshape(pred.shape[0], -1).astype(np.float32)
    gt_flat = gt.reshape(gt.shape[0], -1).astype(np.float32)
    inter = (pred_flat @ gt_flat.T).astype(np.float64)  # ratios in float64, as the toolkit's
    union = pred_flat.sum(axis=1, dtype=np.float64)[:, None] + gt_flat.sum(axis=1, dtype=np.float64)[None, :] - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _pairwise_f(pred: np.ndarray, gt: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    pred_bounds, pred_dilated = _boundaries(pred, kernel)
    gt_bounds, gt_dilated = _boundaries(gt, kernel)
    # matched boundary pixels: predicted ones near the ground truth, ground-truth ones near the prediction
    pred_matched = (pred_bounds @ gt_dilated.T).astype(np.float64)
    gt_matched = (pred_dilated @ gt_bounds.T).astype(np.float64)
    n_pred = pred_bounds.sum(axis=1, dtype=np.float64)[:, None]
    n_gt = gt_bounds.sum(axis=1, dtype=np.float64)[None, :]
    precision = pred_matched / np.maximum(n_pred, 1)
    recall = gt_matched / np.maximum(n_gt, 1)
    # the toolkit's empty cases: no predicted boundary -> P = 1, R = 0; no ground-truth boundary -> P = 0, R = 1;
    # neither -> P = R = 1
    precision = np.where(n_pred == 0, 1.0, np.where(n_gt == 0, 0.0, precision))
    recall = np.where(n_gt == 0, 1.0, np.where(n_pred == 0, 0.0, recall))
    total = precision + recall
    return np.where(total == 0, 0.0, 2 * precision * recall / np.where(total == 0, 1.0, total))


def _boundaries(masks: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boundary, dilated boundary) of each (K, H, W) mask, flattened to (K, H*W) float32."""
    bounds = np.zeros((masks.shape[0], masks.shape[1] * masks.shape[2]), dtype=np.float32)
    dilated = np.zeros_like(bounds)
    for k, mask in enumerate(masks):
        boundary = seg2bmap(mask).astype(np.uint8)
        bounds[k] = boundary.ravel()
        dilated[k] = cv2.dilate(boundary, kernel).ravel()
    return bounds, dilated


def _frames_void(void: np.ndarray | None, like: np.ndarray, ndim: int) -> np.ndarray | None:
    if void is None:
        return None
    void = _as_bool(void)
    if void.shape != np.shape(like) or void.ndim != ndim:
        raise ValueError(f"void must have the masks' shape {np.shape(like)}, got {void.shape}")
    return void if ndim == 3 else void[None]


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0
