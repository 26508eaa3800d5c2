"""Metrics against hand computations and against pycocotools used directly."""

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from losh.evaluation.frame_metrics import (
    METRIC_KEYS,
    FramePrediction,
    MetricAccumulator,
    boundary_f,
    boundary_tolerance,
    disk,
    evaluate_frames,
    format_table,
    mask_iou,
    seg2bmap,
)


def box(shape, top, left, height, width):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def frame(gt, *preds_and_scores):
    """FramePrediction from a ground truth and (mask, score) pairs."""
    masks = np.stack([m for m, _ in preds_and_scores])
    scores = np.array([s for _, s in preds_and_scores], dtype=float)
    return FramePrediction(gt_mask=gt, pred_masks=masks, scores=scores)


def pixels_mask(shape, count):
    """Mask with the first `count` pixels (row-major) set."""
    mask = np.zeros(shape, dtype=bool)
    mask.flat[:count] = True
    return mask


# --- IoU ---------------------------------------------------------------------------------------


def test_mask_iou_on_known_intersection_and_union():
    gt = box((4, 4), 0, 0, 2, 2)  # 4 pixels
    pred = box((4, 4), 0, 1, 2, 2)  # 4 pixels, 2 shared with gt
    assert mask_iou(pred, gt) == pytest.approx(2 / 6)
    assert mask_iou(gt, gt) == 1.0


def test_mask_iou_empty_cases():
    empty = np.zeros((4, 4), dtype=bool)
    full = box((4, 4), 1, 1, 2, 2)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(empty, full) == 0.0
    assert mask_iou(full, empty) == 0.0


def test_mask_iou_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(np.zeros((4, 4)), np.zeros((4, 5)))


def test_overall_iou_differs_from_mean_iou():
    small_gt = box((8, 8), 0, 0, 2, 2)  # I = 4, U = 4 -> IoU 1
    big_gt = box((8, 8), 0, 0, 4, 4)  # pred inside: I = 4, U = 16 -> IoU 0.25
    frames = [frame(small_gt, (small_gt, 0.9)), frame(big_gt, (box((8, 8), 0, 0, 2, 2), 0.9))]
    metrics = evaluate_frames(frames)
    assert metrics["mean_iou"] == pytest.approx((1 + 0.25) / 2)
    assert metrics["overall_iou"] == pytest.approx((4 + 4) / (4 + 16))
    assert metrics["num_images"] == 2


def test_precision_at_k_counts_strictly_above():
    shape = (6, 6)
    frames = []
    # (gt pixels, predicted pixels inside the gt) -> IoU 1/2, 13/20, 3/4, 1, and a disjoint miss.
    for gt_pixels, pred_pixels in [(2, 1), (20, 13), (4, 3), (5, 5)]:
        gt = pixels_mask(shape, gt_pixels)
        frames.append(frame(gt, (pixels_mask(shape, pred_pixels), 1.0)))
    frames.append(frame(box(shape, 0, 0, 1, 1), (box(shape, 5, 5, 1, 1), 1.0)))
    metrics = evaluate_frames(frames)
    assert metrics["mean_iou"] == pytest.approx((0.5 + 0.65 + 0.75 + 1 + 0) / 5)
    # IoU exactly 0.5 does not count at 0.5.
    assert metrics["precision@0.5"] == pytest.approx(3 / 5)
    assert metrics["precision@0.6"] == pytest.approx(3 / 5)
    assert metrics["precision@0.7"] == pytest.approx(2 / 5)
    assert metrics["precision@0.8"] == pytest.approx(1 / 5)
    assert metrics["precision@0.9"] == pytest.approx(1 / 5)


def test_highest_scoring_prediction_gives_the_iou():
    shape = (6, 6)
    gt = box(shape, 1, 1, 2, 2)
    miss = box(shape, 4, 4, 2, 2)
    half = box(shape, 1, 1, 2, 1)  # IoU 0.5
    accumulator = MetricAccumulator()
    assert accumulator.add(gt, np.stack([miss, gt, half]), [0.2, 0.9, 0.5]) == 1.0
    assert accumulator.add(gt, np.stack([miss, gt, half]), [0.2, 0.4, 0.5]) == 0.5
    assert accumulator.add(gt, np.stack([miss, gt, half]), [0.8, 0.4, 0.5]) == 0.0
    assert accumulator.result()["mean_iou"] == pytest.approx(0.5)


# --- COCO mAP ----------------------------------------------------------------------------------


def test_map_of_perfect_predictions_is_one():
    shape = (16, 16)
    frames = [frame(box(shape, i, i, 4 + i, 3), (box(shape, i, i, 4 + i, 3), 0.5 + 0.1 * i)) for i in range(4)]
    assert evaluate_frames(frames)["map"] == pytest.approx(1.0)


def test_map_ignores_extra_predictions_ranked_after_all_true_positives():
    # Every true positive comes before the false positives, so precision is 1 up to recall 1.
    shape = (16, 16)
    frames = [
        frame(box(shape, i, i, 5, 5), (box(shape, i, i, 5, 5), 0.9 - 0.1 * i), (box(shape, 10, 0, 3, 3), 0.05))
        for i in range(3)
    ]
    assert evaluate_frames(frames)["map"] == pytest.approx(1.0)


def _half_perfect_half_missed(perfect_scores, missed_scores):
    shape = (12, 12)
    gt = box(shape, 2, 2, 4, 4)
    miss = box(shape, 8, 8, 3, 3)  # IoU 0 with gt: a false positive at every threshold
    return [frame(gt, (gt, s)) for s in perfect_scores] + [frame(gt, (miss, s)) for s in missed_scores]


def test_map_hand_derived_with_true_positives_first():
    # Ranked detections: TP, TP, FP, FP over 4 ground truths. Recall reaches 0.5 at precision 1.
    # COCO samples precision at the 101 recall thresholds 0, 0.01, ..., 1: the 51 thresholds
    # <= 0.5 get 1, the 50 above get 0, the same at every IoU threshold -> AP = 51 / 101.
    frames = _half_perfect_half_missed([0.9, 0.8], [0.7, 0.6])
    metrics = evaluate_frames(frames)
    assert metrics["map"] == pytest.approx(51 / 101)
    assert metrics["mean_iou"] == pytest.approx(0.5)


def test_map_hand_derived_with_false_positives_first():
    # Ranked detections: FP, FP, TP, TP. Precision 0, 0, 1/3, 1/2 at recall 0, 0, 1/4, 1/2;
    # COCO's interpolation (max precision at any higher recall) gives 1/2 for the 51 recall
    # thresholds <= 0.5 and 0 above -> AP = 0.5 * 51 / 101.
    frames = _half_perfect_half_missed([0.6, 0.5], [0.9, 0.8])
    assert evaluate_frames(frames)["map"] == pytest.approx(0.5 * 51 / 101)


def _rle_for_json(mask):
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_map_matches_pycocotools_used_directly(tmp_path):
    rng = np.random.default_rng(0)
    shape = (32, 40)
    frames = []
    for _ in range(6):
        top, left = rng.integers(2, 14, size=2)
        height, width = rng.integers(6, 16, size=2)
        gt = box(shape, top, left, height, width)
        preds = []
        for _ in range(rng.integers(1, 4)):  # one to three scored predictions of mixed quality
            dy, dx = rng.integers(-2, 3, size=2)
            preds.append((box(shape, top + dy, left + dx, height, width + rng.integers(-2, 3)), rng.uniform()))
        frames.append(frame(gt, *preds))
    ours = evaluate_frames(frames)["map"]

    # The textbook route: annotation and result JSON files, COCO(), loadRes(), COCOeval.
    images, annotations, results = [], [], []
    for index, f in enumerate(frames, start=1):
        images.append({"id": index, "height": shape[0], "width": shape[1]})
        annotations.append(
            {
                "id": index,
                "image_id": index,
                "category_id": 1,
                "segmentation": _rle_for_json(f.gt_mask),
                "area": int(f.gt_mask.sum()),
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
            }
        )
        for mask, score in zip(f.pred_masks, f.scores):
            results.append({"image_id": index, "category_id": 1, "segmentation": _rle_for_json(mask), "score": score})
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    categories = [{"id": 1, "name": "x"}]
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    results_path.write_text(json.dumps(results))
    coco_gt = COCO(str(gt_path))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), iouType="segm")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    expected = coco_eval.stats[0]

    assert 0.05 < expected < 0.95  # the case is mixed, not trivially perfect or empty
    assert ours == pytest.approx(expected, abs=1e-12)


def test_result_is_repeatable_and_matches_evaluate_frames():
    frames = _half_perfect_half_missed([0.9, 0.8], [0.7, 0.6])
    accumulator = MetricAccumulator()
    for f in frames:
        accumulator.add(f.gt_mask, f.pred_masks, f.scores)
    first, second = accumulator.result(), accumulator.result()
    assert first == second == evaluate_frames(frames)
    assert set(first) == set(METRIC_KEYS)


# --- boundary F --------------------------------------------------------------------------------


def test_boundary_tolerance_follows_the_image_diagonal():
    assert boundary_tolerance((10, 10)) == 1  # ceil(0.008 * 14.14) = ceil(0.113)
    assert boundary_tolerance((100, 100)) == 2  # ceil(0.008 * 141.4) = ceil(1.13)
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.7) = ceil(7.84), a DAVIS frame
    assert boundary_tolerance((10, 10), bound_th=3) == 3  # >= 1 means pixels


def test_disk_is_the_euclidean_disk():
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).sum() == 13  # points with x^2 + y^2 <= 4
    # radius 3 is where a disk and a diamond differ: (2, 2) is inside (8 <= 9), (3, 1) is not.
    assert disk(3).tolist() == [
        [0, 0, 0, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 1, 0, 0, 0],
    ]


def test_seg2bmap_of_a_square_by_hand():
    # A pixel is boundary when it differs from its east, south or south-east neighbour: for the
    # 3x3 square at rows/cols 2..4 this is the ring of the 4x4 square at rows/cols 1..4.
    boundary = seg2bmap(box((8, 8), 2, 2, 3, 3))
    ring = box((8, 8), 1, 1, 4, 4) & ~box((8, 8), 2, 2, 2, 2)
    assert np.array_equal(boundary, ring)
    assert boundary.sum() == 12


def test_seg2bmap_at_the_image_border_by_hand():
    # The last row and column compare only along the border, and the corner pixel is never a
    # boundary: a 2x2 square in the bottom-right corner of a 4x4 image gives the L of pixels
    # (1,1), (1,2), (1,3), (2,1), (3,1); a mask covering the whole image has no boundary.
    expected = np.zeros((4, 4), dtype=bool)
    expected[1, 1:] = True
    expected[1:, 1] = True
    assert np.array_equal(seg2bmap(box((4, 4), 2, 2, 2, 2)), expected)
    full = np.ones((4, 4), dtype=bool)
    assert not seg2bmap(full).any()
    assert boundary_f(full, full) == 1.0


def test_boundary_f_hand_checked_shift():
    # 10x10 image -> tolerance 1 pixel, disk(1) = 4-neighbour cross. gt: 3x3 square at cols 2..4,
    # pred: the same square moved 2 columns right. Boundary rings (see test above): gt = ring of
    # rows 1..4 x cols 1..4, pred = ring of rows 1..4 x cols 3..6, 12 pixels each. Pred pixels
    # within one step of a gt ring pixel: rows 1 and 4 at cols 3, 4, 5 (6), and (2,3), (3,3) -> 8.
    # By symmetry 8 of the gt ring pixels are matched too: P = R = 8/12, F = 2/3.
    gt = box((10, 10), 2, 2, 3, 3)
    pred = box((10, 10), 2, 4, 3, 3)
    assert boundary_f(pred, gt) == pytest.approx(2 / 3)


def test_boundary_f_identical_and_shifted_masks():
    gt = box((100, 100), 30, 30, 20, 20)  # tolerance 2 pixels
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(box((100, 100), 31, 31, 20, 20), gt) == 1.0  # moved sqrt(2) < 2 pixels
    assert boundary_f(box((100, 100), 32, 30, 20, 20), gt) == 1.0  # moved exactly 2 pixels
    far = boundary_f(box((100, 100), 35, 35, 20, 20), gt)  # moved 5 pixels along each axis
    assert far < 0.2  # only the few pixels near where the two outlines cross still match


def test_boundary_f_matches_brute_force_distances():
    rng = np.random.default_rng(1)
    shape = (40, 48)
    gt = rng.uniform(size=shape) < 0.02  # two unrelated sparse masks: many boundary pixels, some
    pred = rng.uniform(size=shape) < 0.02  # within the tolerance of the other mask, some not
    tolerance = 3  # pixels (a bound_th >= 1 is a pixel count); large enough for disk != diamond
    pred_points = np.argwhere(seg2bmap(pred))
    gt_points = np.argwhere(seg2bmap(gt))
    distances = np.sqrt(((pred_points[:, None, :] - gt_points[None, :, :]) ** 2).sum(-1))
    precision = (distances.min(1) <= tolerance).mean()
    recall = (distances.min(0) <= tolerance).mean()
    assert 0 < precision < 1 and 0 < recall < 1
    assert boundary_f(pred, gt, bound_th=tolerance) == pytest.approx(2 * precision * recall / (precision + recall))


def test_boundary_f_empty_cases():
    empty = np.zeros((10, 10), dtype=bool)
    square = box((10, 10), 2, 2, 3, 3)
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(empty, square) == 0.0
    assert boundary_f(square, empty) == 0.0


def test_j_f_jf_with_empty_ground_truth():
    shape = (10, 10)
    empty = np.zeros(shape, dtype=bool)
    square = box(shape, 2, 2, 3, 3)
    shifted = box(shape, 2, 4, 3, 3)  # IoU 1/5 (3 of 15 pixels), F 2/3 (hand-checked above)
    frames = [
        frame(empty, (empty, 0.9)),  # instance absent and predicted absent: J = F = 1
        frame(empty, (square, 0.9)),  # instance absent but predicted: J = F = 0
        frame(square, (shifted, 0.9)),
    ]
    metrics = evaluate_frames(frames)
    assert metrics["j"] == pytest.approx((1 + 0 + 1 / 5) / 3)
    assert metrics["f"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert metrics["jf"] == pytest.approx((metrics["j"] + metrics["f"]) / 2)
    assert metrics["mean_iou"] == pytest.approx(metrics["j"])
    assert metrics["overall_iou"] == pytest.approx((0 + 0 + 3) / (0 + 9 + 15))


def test_empty_ground_truth_counts_as_in_mttr():
    """MTTR keeps an empty ground-truth mask as a COCO annotation of area 0: no prediction matches it
    (pycocotools' box IoU of an empty mask is 0), so it is a missed object in AP; its IoU is 1 for an
    empty prediction and 0 otherwise, and a predicted mask adds its area to the overall union."""
    shape = (10, 10)
    empty = np.zeros(shape, dtype=bool)
    square = box(shape, 2, 2, 3, 3)
    # a false alarm with the highest score on the empty image: ranked first, a false positive; the
    # square is found at recall 1/2 with precision 1/2; COCO's 101 recall points 0..0.5 get 0.5, the rest 0
    alarm = evaluate_frames([frame(square, (square, 0.5)), frame(empty, (square, 0.99))])
    assert alarm["map"] == pytest.approx(51 * 0.5 / 101)
    assert alarm["mean_iou"] == pytest.approx(0.5) and alarm["precision@0.5"] == 0.5
    assert alarm["overall_iou"] == pytest.approx(9 / (9 + 9))
    # an empty prediction on it is still a false positive for AP, ranked after the true one here
    quiet = evaluate_frames([frame(square, (square, 0.5)), frame(empty, (empty, 0.1))])
    assert quiet["map"] == pytest.approx(51 / 101)
    assert quiet["mean_iou"] == quiet["overall_iou"] == quiet["precision@0.9"] == 1.0
    # only empty ground truth: nothing can be found, AP 0 (as COCOeval gives MTTR), IoU metrics 1
    only_empty = evaluate_frames([frame(empty, (empty, 0.5))])
    assert only_empty["map"] == 0.0
    assert only_empty["j"] == only_empty["f"] == only_empty["overall_iou"] == 1.0


# --- API edges and the table -------------------------------------------------------------------


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        evaluate_frames([])
    with pytest.raises(ValueError, match="no images"):
        MetricAccumulator().result()


def test_add_checks_shapes():
    accumulator = MetricAccumulator()
    gt = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="KxHxW"):
        accumulator.add(gt, np.zeros((1, 4, 5), dtype=bool), [0.5])
    with pytest.raises(ValueError, match="scores"):
        accumulator.add(gt, np.zeros((2, 4, 4), dtype=bool), [0.5])
    assert len(accumulator) == 0
    accumulator.add(gt, np.zeros((4, 4), dtype=bool), 0.5)  # a single HxW mask with a scalar score
    assert len(accumulator) == 1


def test_format_table_prints_percentages():
    frames = [frame(box((8, 8), 0, 0, 2, 2), (box((8, 8), 0, 0, 2, 2), 0.9)),
              frame(box((8, 8), 0, 0, 4, 4), (box((8, 8), 0, 0, 2, 2), 0.9))]
    table = format_table(evaluate_frames(frames))
    assert "62.50%" in table  # mean IoU (1 + 0.25) / 2
    assert "40.00%" in table  # overall IoU 8 / 20
    lines = table.splitlines()
    assert any(line.startswith("num_images") and line.rstrip().endswith(" 2") for line in lines)
    assert "n/a" in format_table({"map": float("nan")})
