import numpy as np

from losh.inference.drawing import GT_COLOUR, PRED_COLOUR, comparison_picture


def test_comparison_picture_puts_ground_truth_and_prediction_side_by_side():
    frame = np.full((64, 88, 3), 100, np.uint8)
    gt = np.zeros((64, 88), bool)
    gt[10:30, 10:30] = True
    pred = np.zeros_like(gt)
    pred[40:60, 50:80] = True
    picture = comparison_picture(frame, "a long expression " * 6, "short", gt, pred, gt, pred, 0.0)
    zoom = round(320 / 88)                                    # small frames are enlarged
    bar = picture.shape[0] - 64 * zoom
    assert picture.shape[1] == 4 * 88 * zoom + 3 * 4           # four panels and three gaps
    panel_width = 88 * zoom + 4
    inside_gt = picture[bar + 20 * zoom, 20 * zoom].astype(int)
    inside_pred = picture[bar + 50 * zoom, panel_width + 65 * zoom].astype(int)
    outside = picture[bar + 50 * zoom, 5].astype(int)
    assert np.argmax(inside_gt) == np.argmax(GT_COLOUR)        # green over the ground truth
    assert np.argmax(inside_pred) == np.argmax(PRED_COLOUR)    # red over the prediction
    assert (outside == 100).all()                              # the frame elsewhere
