"""Referring image segmentation scored as the field reports it, on a prepared RefCOCO set: overall IoU (cumulative
intersection over cumulative union), mean IoU and precision@0.5..0.9 per split, against a hand computation on
planted masks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from losh.cli.main import app
from losh.evaluation.predictions import mask_path, score_predictions
from losh.schemas.prepared_reader import PreparedDataset


@pytest.fixture(scope="module")
def refcoco_prep(tmp_path_factory):
    root, prep = (tmp_path_factory.mktemp("ris") / name for name in ("raw", "prep"))
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "--layout", "refcoco", "--out", str(root), "--videos", "12"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["prepare-data", "--dataset", "refcoco", "--root", str(root), "--out", str(prep),
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    return prep


@pytest.mark.parametrize("split", ["val", "testA", "testB"])
def test_overall_mean_iou_and_precision_by_hand(refcoco_prep, tmp_path, split):
    data = PreparedDataset(refcoco_prep, split)
    if len(data) == 0:
        pytest.skip(f"the synthetic set has no {split} sample")
    predictions = tmp_path / "pred"
    inter, union, ious = 0, 0, []
    for i, record in enumerate(data.records):
        gt = data.read(record).long_mask.astype(bool)
        if gt.ndim == 3:
            gt = gt[0]
        pred = gt.copy()
        cols = np.nonzero(gt.any(0))[0]
        if i % 3 == 1 and len(cols):                     # the right half of the object kept
            pred[:, : (cols.min() + cols.max()) // 2 + 1] = False
        elif i % 3 == 2:                                 # the object and a strip of background beside it
            pred[: gt.shape[0] // 4] = True
        path = mask_path(predictions, record)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), pred.astype(np.uint8) * 255)
        i_, u_ = int((pred & gt).sum()), int((pred | gt).sum())
        inter, union = inter + i_, union + u_
        ious.append(i_ / u_ if u_ else 1.0)
    metrics, missing = score_predictions(refcoco_prep, predictions, split, progress=False, resolution="prepared")
    assert not missing and len(ious) == len(data) > 0
    assert metrics["overall_iou"] == pytest.approx(inter / union, abs=1e-6)
    assert metrics["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-6)
    for k in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert metrics[f"precision@{k}"] == pytest.approx(np.mean(np.array(ious) > k), abs=1e-9)
