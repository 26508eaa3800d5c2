"""Whole-video evaluation (Refer-YouTube-VOS, Refer-DAVIS17): every frame of each video predicted by
sliding windows (losh/inference/video_inference.py), one query per expression, then

- J, F and J&F per expression over its annotated frames (DAVIS definitions), averaged over expressions,
  at the original video size on the data set's own label maps (void pixels, 255, left out);
- for data sets with expression sets (Refer-DAVIS17: annot1, annot1_full_video, annot2, annot2_full_video),
  the field's protocol: per set, each sequence's predicted objects composed into label maps and scored by
  the DAVIS-2017 unsupervised protocol (losh/evaluation/video_metrics.py), and the mean over the sets;
- optionally the Refer-YouTube-VOS server's submission zip (losh/evaluation/submission.py) of every frame of every
  expression (the valid split has no public masks: the server scores it).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from losh.data.dataset import evenly_spread
from losh.evaluation.sample_log import SampleLog
from losh.evaluation.submission import SubmissionWriter
from losh.evaluation.video_metrics import JFAccumulator, compose_label_maps, davis_unsupervised_sequence, frame_j_f
from losh.inference.video_inference import predict_video
from losh.schemas.prepared import SampleRecord
from losh.schemas.prepared_reader import PreparedDataset
from losh.schemas.progress import progress_bar


class ShardFrames:
    """The frames of one video of PREP, as `predict_video` reads them (RGB at the prepared size)."""

    def __init__(self, data: PreparedDataset, record: SampleRecord) -> None:
        self.data, self.record = data, record

    def __len__(self) -> int:
        return len(self.record.window)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.record.size)

    def read(self, indices: list[int]) -> np.ndarray:
        return self.data.read_frames(self.record, [self.record.window[i] for i in indices])


@torch.no_grad()
def evaluate_videos(model: torch.nn.Module, data: Path | PreparedDataset, *, split: str,
                    inference_shorts: dict[str, str] | None = None,
                    submission: Path | None = None, amp: str = "off", progress: bool = True,
                    max_samples: int = 0, spill_dir: Path | None = None, samples: SampleLog | None = None) -> dict:
    """Whole-video metrics of `split` of `data` (PREP, or its `split` already open; kind "video"); see the
    module docstring. `inference_shorts`: {sample_id: short text} to run through the encoder instead of the
    prepared ones. `samples`: receives each expression's J, F and an overlay of its first annotated frame."""
    dataset = data if isinstance(data, PreparedDataset) else PreparedDataset(data, split)
    records = evenly_spread(dataset.records, max_samples)
    if not records:
        raise ValueError(f"{dataset.root} holds no {split} sample")
    if any(r.kind != "video" for r in records):
        raise ValueError(f"the {split} split of {dataset.root} holds window samples: it is scored per annotated frame")
    by_video: dict[str, list[SampleRecord]] = defaultdict(list)
    for r in records:
        by_video[r.video_id].append(r)
    scored = JFAccumulator()
    with_sets = any(r.subset for r in records)
    davis = JFAccumulator() if with_sets else None
    unscored = frames_predicted = 0
    with ExitStack() as stack:
        # the zip appears only when every video is done (SubmissionWriter renames it into place on exit)
        writer = stack.enter_context(SubmissionWriter(submission, overwrite=True)) if submission is not None else None
        for video_id in progress_bar(sorted(by_video), desc=f"evaluate {split}", unit="video", disable=not progress):
            group = by_video[video_id]
            first = group[0]
            longs = [r.long for r in group]
            shorts = [inference_shorts[r.sample_id] if inference_shorts else r.short for r in group]
            names = dataset.frame_names(first) if writer is not None else []
            targets = sorted({f for r in group for f in r.target_frames})
            labels = {f: dataset.original_labels(first, f) for f in targets}
            frame_scores: dict[int, list[tuple[float, float]]] = defaultdict(list)
            kept: dict[int, dict[int, np.ndarray]] = defaultdict(dict)     # expression -> frame -> mask (sets)
            pictured: dict[int, tuple] = {}      # expression -> (frame, ground truth, mask) of its first target
            with predict_video(model, ShardFrames(dataset, first), longs, shorts, window=model.config.window,
                               output_size=tuple(first.orig_size), amp=amp, spill_dir=spill_dir) as prediction:
                for t, masks in prediction.frame_masks():
                    frame = first.window[t]
                    frames_predicted += 1
                    for k, (record, mask) in enumerate(zip(group, masks)):
                        if writer is not None:
                            writer.add(video_id, record.expression_id, names[frame - 1], mask)
                        if frame in record.target_frames:
                            gt, void = _ground_truth(dataset, record, frame, labels.get(frame), mask.shape)
                            frame_scores[k].append(frame_j_f(mask, gt, void))
                            if samples is not None and frame == record.target_frames[0]:
                                pictured[k] = _at_frame_size(dataset, first, frame, gt, mask)
                            if with_sets:
                                kept[k][frame] = mask
            for k, record in enumerate(group):
                if not record.targets:
                    unscored += 1
                    continue
                j, f = np.mean(frame_scores[k], axis=0)
                scored.add(record.sample_id, float(j), float(f), subset=record.subset)
                if samples is not None and k in pictured:
                    samples.add({"sample_id": record.sample_id, "video_id": video_id, "frame": record.target_frames[0],
                                 "long": record.long, "short": shorts[k], "iou": float(j), "j": float(j),
                                 "f": float(f), "subset": record.subset}, *pictured[k])
            if davis is not None:
                _score_sets(group, kept, labels, targets, davis)
    report: dict = {"samples": len(records), "videos": len(by_video), "frames": frames_predicted,
                    "expressions_without_masks": unscored}
    if len(scored):
        report["per_expression"] = scored.result()
        report.update({k: report["per_expression"][k] for k in ("J", "F", "J&F")})
    if davis is not None and len(davis):
        report["davis_unsupervised"] = davis.result()
        report.update({k: report["davis_unsupervised"][k] for k in ("J", "F", "J&F")})
        report["headline"] = "davis_unsupervised (mean over the expression sets)"
    if "J&F" in report:   # the names `losh train --best-metric` and its log use
        report.update({"j": report["J"], "f": report["F"], "jf": report["J&F"]})
    if submission is not None:
        report["submission"] = str(submission)
    return report


def _at_frame_size(dataset: PreparedDataset, record: SampleRecord, frame: int, gt: np.ndarray,
                   mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored frame `frame` (RGB) and the ground truth and predicted masks (at the video's size) resized to it."""
    import cv2
    picture = dataset.read_frames(record, [frame])[0]
    size = (picture.shape[1], picture.shape[0])
    gt_small, mask_small = (cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
                            for m in (gt, mask))
    return picture, gt_small, mask_small


def _ground_truth(dataset: PreparedDataset, record: SampleRecord, frame: int, labels: np.ndarray | None,
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The referred object's mask at the original size and the void pixels: from the raw label map where the
    shard keeps it, else the stored mask resized (nearest)."""
    if labels is not None:
        return labels == record.instance_id, labels == 255
    import cv2
    position = record.target_frames.index(frame)
    stored = dataset.read_clip([record], with_frames=False)[0].long_masks[position]
    return cv2.resize(stored.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0, None


def _score_sets(group: list[SampleRecord], kept: dict[int, dict[int, np.ndarray]], labels: dict[int, np.ndarray],
                targets: list[int], davis: JFAccumulator) -> None:
    """The DAVIS-2017 unsupervised protocol per expression set of one sequence: the set's objects composed
    into label maps over the annotated frames, matched to the ground truth's objects."""
    if not targets or any(labels.get(f) is None for f in targets):
        return
    gt = np.stack([labels[f] for f in targets])
    by_set: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for k, record in enumerate(group):
        if record.targets:
            by_set[record.subset][record.instance_id] = np.stack([kept[k][f] for f in targets])
    for subset, objects in by_set.items():
        predicted = compose_label_maps({oid: m.astype(np.float32) for oid, m in objects.items()})
        for gt_id, j, f in davis_unsupervised_sequence(predicted, gt):
            davis.add(f"{group[0].video_id}_{gt_id}", j, f, subset=subset)
