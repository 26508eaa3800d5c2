"""Video J/F, the DAVIS-2017 unsupervised protocol and subset means, against hand computations."""

import numpy as np
import pytest

from losh.evaluation.frame_metrics import boundary_f, mask_iou
from losh.evaluation.video_metrics import (
    JFAccumulator,
    compose_label_maps,
    davis_unsupervised,
    davis_unsupervised_sequence,
    expression_j_f,
    frame_j_f,
)

SHAPE = (20, 20)  # diagonal 28.3 px -> boundary tolerance ceil(0.008 * 28.3) = 1 px


def box(top, left, height, width, shape=SHAPE):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def empty(shape=SHAPE):
    return np.zeros(shape, dtype=bool)


def labels(*objects):
    """One label frame from (id, mask) pairs; later pairs overwrite earlier ones."""
    frame = np.zeros(SHAPE, dtype=np.uint8)
    for label, mask in objects:
        frame[mask] = label
    return frame


# --- one expression --------------------------------------------------------------------------------


def test_frame_j_f_by_hand():
    gt = box(2, 2, 4, 4)  # 16 pixels
    pred = box(2, 4, 4, 4)  # 16 pixels, 8 shared -> J = 8 / 24
    # seg2bmap marks a pixel that differs from its east, south or south-east neighbour, so a box's
    # boundary is the 16-pixel perimeter of rows 1..5 x cols 1..5 (gt) / cols 3..7 (pred).
    # Tolerance 1 px: the disk is a 3x3 cross. Predicted boundary pixels within it of the gt's:
    # rows 1 and 5: cols 3, 4, 5 (on it) and 6 (next to col 5), not col 7 -> 8;
    # col 3: rows 2 and 4 (next to rows 1 and 5), not row 3 -> 2; col 7: none. Precision = 10 / 16,
    # and recall = 10 / 16 by symmetry, so F = 0.625.
    j, f = frame_j_f(pred, gt)
    assert j == pytest.approx(8 / 24)
    assert f == pytest.approx(0.625)
    assert (j, f) == pytest.approx((mask_iou(pred, gt), boundary_f(pred, gt)))


def test_expression_j_f_is_the_mean_over_frames():
    gt = np.stack([box(2, 2, 4, 4), box(2, 2, 4, 4), box(5, 5, 2, 2)])
    pred = np.stack([box(2, 2, 4, 4), box(2, 4, 4, 4), empty()])
    j, f = expression_j_f(pred, gt)
    assert j == pytest.approx((1 + 8 / 24 + 0) / 3)
    assert f == pytest.approx((1 + 0.625 + 0) / 3)


def test_empty_prediction_and_empty_ground_truth_score_one():
    both_empty = np.zeros((3, *SHAPE), dtype=bool)
    assert expression_j_f(both_empty, both_empty) == (1.0, 1.0)
    gt = np.stack([box(1, 1, 3, 3), empty(), empty()])
    # frame 0: empty prediction of a present object scores 0 / 0; frames 1, 2: empty/empty score 1 / 1
    assert expression_j_f(both_empty, gt) == pytest.approx((2 / 3, 2 / 3))


def test_void_pixels_leave_both_masks():
    gt = box(2, 2, 4, 4)
    pred = box(2, 2, 4, 6)  # 8 extra pixels in cols 6, 7
    void = box(0, 6, 20, 2)  # exactly those columns are void
    assert frame_j_f(pred, gt) == pytest.approx((16 / 24, boundary_f(pred, gt)))
    assert frame_j_f(pred, gt, void) == pytest.approx((1.0, 1.0))
    # an object entirely under void: nothing is left of either mask -> both "empty" -> 1
    assert frame_j_f(box(0, 6, 3, 2), box(5, 6, 3, 2), void) == (1.0, 1.0)


def test_expression_j_f_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        expression_j_f(box(0, 0, 2, 2), box(0, 0, 2, 2))
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        expression_j_f(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))


# --- composing label maps --------------------------------------------------------------------------


def test_compose_label_maps_thresholds_and_resolves_overlaps_by_probability():
    p1 = np.zeros((1, 2, 3), dtype=np.float32)
    p2 = np.zeros((1, 2, 3), dtype=np.float32)
    p1[0] = [[0.9, 0.6, 0.4], [0.7, 0.2, 0.0]]
    p2[0] = [[0.8, 0.7, 0.45], [0.7, 0.5, 0.0]]
    composed = compose_label_maps({1: p1, 2: p2})
    # (0,0) 1 wins 0.9 > 0.8; (0,1) 2 wins; (0,2) both below 0.5 -> background;
    # (1,0) tie -> smaller id; (1,1) 0.5 reaches the threshold -> 2; (1,2) background
    assert composed.tolist() == [[[1, 2, 0], [1, 2, 0]]]
    assert composed.dtype == np.uint8


def test_compose_label_maps_matches_referformers_argmax_rule():
    rng = np.random.default_rng(0)
    probabilities = rng.random((3, 4, 9, 11)).astype(np.float32)  # 3 objects (ids 1..3), 4 frames
    probabilities[1, :, :3] = probabilities[0, :, :3]  # exact ties on a strip
    # ReferFormer inference_davis.py: scores < 0.5 zeroed, background 0.1 in front, argmax
    zeroed = np.where(probabilities < 0.5, 0.0, probabilities)
    expected = np.concatenate([np.full((1, 4, 9, 11), 0.1), zeroed]).argmax(axis=0)
    composed = compose_label_maps({i + 1: p for i, p in enumerate(probabilities)})
    np.testing.assert_array_equal(composed, expected)


def test_compose_label_maps_binary_overlap_goes_to_the_smallest_id():
    a = box(0, 0, 4, 4)[None]
    b = box(2, 2, 4, 4)[None]
    composed = compose_label_maps({7: b, 3: a})
    assert composed[0, 3, 3] == 3 and composed[0, 5, 5] == 7 and composed[0, 10, 10] == 0
    with pytest.raises(ValueError, match="object ids"):
        compose_label_maps({255: a})


# --- DAVIS-2017 unsupervised -----------------------------------------------------------------------


def two_object_sequence(num_frames=3):
    a, b = box(1, 1, 5, 5), box(10, 10, 6, 4)
    return np.stack([labels((1, a), (2, b))] * num_frames), a, b


def test_swapped_prediction_ids_are_matched_back():
    gt, a, b = two_object_sequence()
    pred = np.stack([labels((2, a), (1, b))] * 3)  # the same objects under each other's id
    assert davis_unsupervised_sequence(pred, gt) == [(1, 1.0, 1.0), (2, 1.0, 1.0)]


def test_matching_maximises_the_mean_of_j_and_f():
    gt, a, b = two_object_sequence(num_frames=2)
    shifted_a = box(1, 2, 5, 5)  # J = 20 / 30 with a
    pred = np.stack([labels((3, shifted_a), (1, b))] * 2)  # id 2 is missing: an empty proposal
    result = davis_unsupervised_sequence(pred, gt)
    j_a, f_a = frame_j_f(shifted_a, a)
    assert result == [(1, pytest.approx(j_a), pytest.approx(f_a)), (2, 1.0, 1.0)]
    assert j_a == pytest.approx(20 / 30)


def test_missing_prediction_scores_zero():
    gt, a, b = two_object_sequence()
    pred = np.stack([labels((1, b))] * 3)  # one proposal: matched to object 2; object 1 gets padding
    assert davis_unsupervised_sequence(pred, gt) == [(1, 0.0, 0.0), (2, 1.0, 1.0)]
    nothing = np.zeros_like(gt)
    assert davis_unsupervised_sequence(nothing, gt) == [(1, 0.0, 0.0), (2, 0.0, 0.0)]


def test_unsupervised_scores_the_first_and_last_frame_too():
    # davis2017/evaluation.py drops frames 0 and T-1 only under `if self.task == 'semi-supervised'`;
    # the unsupervised task (Refer-DAVIS17's) scores every frame.
    gt = np.stack([labels((1, box(2, 2, 4, 4)))] * 4)
    pred = gt.copy()
    pred[0] = 0  # first frame missed
    pred[-1] = 0  # last frame missed
    [(gt_id, j, f)] = davis_unsupervised_sequence(pred, gt)
    assert gt_id == 1 and j == pytest.approx(2 / 4) and f == pytest.approx(2 / 4)


def test_void_label_and_objects_counted_on_the_first_frame():
    a, b, c = box(1, 1, 4, 4), box(8, 8, 4, 4), box(14, 1, 4, 4)
    gt = np.stack([labels((1, a), (2, b)), labels((1, a), (2, b), (3, c))])
    gt[:, :, 18:] = 255  # void columns
    pred = np.stack([labels((1, a), (2, b)), labels((1, a), (2, b), (3, c))])
    pred[:, :, 18:] = 1  # predicted over the void: not counted
    # object 3 appears after the first frame: the toolkit does not score it
    assert davis_unsupervised_sequence(pred, gt) == [(1, 1.0, 1.0), (2, 1.0, 1.0)]


def test_too_many_proposals_are_refused():
    gt, a, b = two_object_sequence()
    pred = np.where(gt > 0, 21, 0).astype(np.uint8)
    with pytest.raises(ValueError, match="proposals"):
        davis_unsupervised_sequence(pred, gt)


def test_davis_unsupervised_means_over_all_objects_of_all_sequences():
    gt2, a, b = two_object_sequence()
    gt1 = np.stack([labels((1, a))] * 3)
    sequences = {
        "two": (np.stack([labels((1, b))] * 3), gt2),  # object 1 missed (0, 0), object 2 perfect (1, 1)
        "one": (gt1.copy(), gt1),  # perfect (1, 1)
    }
    result = davis_unsupervised(sequences).result()
    assert result == {"J": pytest.approx(2 / 3), "F": pytest.approx(2 / 3), "J&F": pytest.approx(2 / 3), "expressions": 3}


# --- accumulating expressions and subsets ----------------------------------------------------------


def test_accumulator_single_subset():
    acc = JFAccumulator()
    acc.add("v1/0", 0.5, 0.7)
    acc.add("v1/1", 0.3, 0.1)
    assert acc.result() == {"J": pytest.approx(0.4), "F": pytest.approx(0.4), "J&F": pytest.approx(0.4), "expressions": 2}


def test_accumulator_reports_the_mean_of_subset_means():
    acc = JFAccumulator()
    counts_and_values = {"anno_0": (1, 0.8), "anno_1": (2, 0.6), "anno_2": (3, 0.4), "anno_3": (4, 0.2)}
    for subset, (count, value) in counts_and_values.items():
        for i in range(count):
            acc.add(f"obj{i}", value, value / 2, subset=subset)
    result = acc.result()
    assert result["J"] == pytest.approx((0.8 + 0.6 + 0.4 + 0.2) / 4)  # 0.5
    pooled = (0.8 * 1 + 0.6 * 2 + 0.4 * 3 + 0.2 * 4) / 10  # 0.4: not what the field reports
    assert result["J"] != pytest.approx(pooled)
    assert result["F"] == pytest.approx(0.25)
    assert result["J&F"] == pytest.approx(0.375)
    assert result["expressions"] == 10
    assert result["subsets"]["anno_2"] == {
        "J": pytest.approx(0.4), "F": pytest.approx(0.2), "J&F": pytest.approx(0.3), "expressions": 3
    }


def test_accumulator_refuses_duplicates_percentages_and_emptiness():
    acc = JFAccumulator()
    with pytest.raises(ValueError, match="no entries"):
        acc.result()
    acc.add("k", 0.5, 0.5, subset="a")
    acc.add("k", 0.5, 0.5, subset="b")  # the same key in another subset is another entry
    with pytest.raises(ValueError, match="already added"):
        acc.add("k", 0.1, 0.1, subset="a")
    with pytest.raises(ValueError, match="fraction"):
        acc.add("p", 55.0, 60.0)
    with pytest.raises(ValueError, match="fraction"):
        acc.add("n", float("nan"), 0.5)
