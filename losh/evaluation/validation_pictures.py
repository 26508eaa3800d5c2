"""What training shows of its predictions at a validation: a fixed few expressions of the validation split (the same
ones every time, so that one picture can be compared with the last), each as a row of frame | ground truth |
long-text mask | short-text mask, at the prepared size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from losh.data.dataset import evenly_spread, normalise_frames
from losh.inference.drawing import stack_rows, validation_row
from losh.inference.video_inference import query_masks
from losh.schemas.prepared import SampleRecord
from losh.schemas.prepared_reader import PreparedDataset

PICTURE_SAMPLES = 4


def fixed_records(dataset: PreparedDataset, count: int = PICTURE_SAMPLES) -> list[SampleRecord]:
    """`count` records with masks, evenly spread over the split: the same ones at every validation."""
    return evenly_spread([r for r in dataset.records if r.targets], count)


@torch.no_grad()
def validation_overlays(model: torch.nn.Module, data: Path, split: str, count: int = PICTURE_SAMPLES) -> np.ndarray:
    """One RGB picture, a row per fixed expression (`fixed_records`); the model is left in eval mode."""
    model.eval()
    dataset = PreparedDataset(data, split)
    try:
        rows = [_row(model, dataset, record) for record in fixed_records(dataset, count)]
    finally:
        dataset.close()
    if not rows:
        raise ValueError(f"the {split} split of {data} holds no sample with masks to picture")
    return stack_rows(rows)


def _row(model: torch.nn.Module, dataset: PreparedDataset, record: SampleRecord) -> np.ndarray:
    frames, annotated = _window(model, dataset, record)
    masks = dataset.read_clip([record], with_frames=False)[0]
    device = next(model.parameters()).device
    clip = normalise_frames(torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)[None])
    size = tuple(frames.shape[1:3])
    result = model.infer(clip, [record.long], [record.short], annotated_index=annotated, upsample=False)
    position = result["frame_indices"].index(annotated)
    best = int(result["scores"][0].float().argmax())
    pred_long = query_masks(result["pred_masks"][0, position, best:best + 1], size, size)[0].cpu().numpy()
    pred_short = None
    if model.config.use_short_text:
        out = model(clip, [record.long], [record.short], annotated_index=annotated)
        if "short" in out:
            at = out["frame_indices"].index(annotated)
            pred_short = query_masks(out["short"]["pred_masks"][0, at, best:best + 1], size, size)[0].cpu().numpy()
    gt = masks.long_masks[0]
    union = np.logical_or(gt, pred_long).sum()
    iou = float(np.logical_and(gt, pred_long).sum() / union) if union else 1.0
    return validation_row(frames[annotated], record.long, record.short, gt, pred_long, pred_short, iou)


def _window(model: torch.nn.Module, dataset: PreparedDataset, record: SampleRecord) -> tuple[np.ndarray, int]:
    """The frames the model sees for the record's first annotated frame, and that frame's index among them: the
    record's window, or for a whole video the model's window around it."""
    if record.kind != "video":
        return dataset.read_frames(record), record.targets[0]
    length, target = int(model.config.window), record.targets[0]
    start = min(max(0, target - length // 2), max(0, len(record.window) - length))
    positions = list(range(start, min(len(record.window), start + length)))
    return dataset.read_frames(record, [record.window[p] for p in positions]), target - start
