"""A folder of predicted masks, so that any method's output can be scored with our protocol.

Layout (documented in README "losh evaluate"):
    DIR/predictions.json                         {"schema": "losh.predictions", "version": 3,
                                                  "split": ..., "resolution": "original" | "prepared",
                                                  "scores": {sample_id: float}}
    DIR/<video_id>/<expression_id>/<frame:05d>.png one binary mask (0 / 255) per sample and frame, at
                                                 the original video size (record.orig_size) or the
                                                 prepared one (record.size), as `resolution` says
A sample without a score is scored 1.0. Version 1 folders (no `resolution`) hold prepared-size masks; version 1 and 2
folders name the folder by <instance_id> (one expression per object and frame, as A2D-Sentences; RefCOCO's objects
have several, hence the expression since version 3).

One mask a sample: its mAP is not MTTR's, which ranks all query masks of a sample by their scores,
so the folder's figure is named `map_single_mask` (COCO AP of the one scored mask a sample).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from losh.evaluation.frame_metrics import MetricAccumulator
from losh.evaluation.ground_truth import GroundTruth
from losh.schemas.atomic import atomic_path, atomic_write_json
from losh.schemas.prepared import SampleRecord, SchemaError, check_version
from losh.schemas.prepared_reader import PreparedDataset
from losh.schemas.progress import progress_bar
from losh.schemas.safe_paths import join_ids

PREDICTIONS_SCHEMA = "losh.predictions"
PREDICTIONS_VERSION = 3


def mask_path(root: Path, record: SampleRecord, frame: int | None = None, version: int = PREDICTIONS_VERSION
              ) -> Path:
    """Where a sample's mask of `frame` (default: its anchor frame) lies in a predictions folder of `version`."""
    folder = record.expression_id if version >= 3 else str(record.instance_id)
    return join_ids(root, record.video_id, folder, f"{frame or record.frame:05d}.png")


def write_mask(path: Path, mask: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), mask.astype(np.uint8) * 255):
            raise OSError(f"could not write {path}")


def read_mask(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"missing or unreadable prediction {path}")
    return image > 127


def write_scores(root: Path, split: str, scores: dict[str, float], resolution: str = "original") -> None:
    doc = {"schema": PREDICTIONS_SCHEMA, "version": PREDICTIONS_VERSION, "split": split, "resolution": resolution,
           "scores": {k: float(v) for k, v in sorted(scores.items())}}
    atomic_write_json(Path(root) / "predictions.json", doc)


def score_predictions(prep: Path, predictions: Path, split: str = "test", progress: bool = True,
                      resolution: str | None = None, raw: Path | None = None) -> tuple[dict, list[str]]:
    """Metrics of a predictions folder against PREP's `split` at `resolution` (default: the folder's);
    also the ids of missing predictions (scored as empty masks, so a partial folder cannot look better
    than it is). `map` is reported as `map_single_mask` (one mask a sample; see the module docstring)."""
    predictions = Path(predictions)
    scores: dict[str, float] = {}
    saved_resolution = "original"
    version = PREDICTIONS_VERSION
    index = predictions / "predictions.json"
    if index.exists():
        doc = json.loads(index.read_text())
        if doc.get("schema") == PREDICTIONS_SCHEMA and doc.get("version") in (1, 2):
            version = doc["version"]
            saved_resolution = doc.get("resolution", "prepared")   # version 1 wrote prepared-size masks
        else:
            check_version(doc, str(index), PREDICTIONS_SCHEMA, PREDICTIONS_VERSION)
            saved_resolution = doc["resolution"]
        scores = doc["scores"]
    elif not predictions.is_dir():
        raise FileNotFoundError(f"no predictions folder {predictions}")
    data = PreparedDataset(prep, split)
    if len(data) == 0:
        raise SchemaError(f"{prep} holds no {split} sample")
    truth = GroundTruth(data, resolution or saved_resolution, raw)
    acc = MetricAccumulator()
    missing: list[str] = []
    for record in progress_bar(data.records, desc="score", unit="sample", disable=not progress):
        gt = truth.long_mask(record, data.read(record).long_mask)
        path = mask_path(predictions, record, version=version)
        if path.exists():
            pred = read_mask(path)
            if pred.shape != gt.shape:
                raise SchemaError(f"{path}: mask of size {pred.shape}, the {truth.resolution} frame is {gt.shape}")
        else:
            missing.append(record.sample_id)
            pred = np.zeros_like(gt)
        acc.add(gt, pred[None], [scores.get(record.sample_id, 1.0)])
    metrics = acc.result()
    metrics["map_single_mask"] = metrics.pop("map")
    return {**metrics, "resolution": truth.resolution}, missing
