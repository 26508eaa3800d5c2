"""Training/evaluation input: samples read from the prepared shards (and flow shards), augmented.

Everything here is cheap array work on already-decoded windows: no video decoding, no optical
flow. Frames leave the loader as uint8 and are normalised on the device, which keeps the
host-to-device copy 4x smaller than float32.
"""
from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from losh.data.still_images import still_image_clip
from losh.pipeline.flow_field import hflip_flows
from losh.schemas.flow_units import rescale_vectors
from losh.schemas.prepared import SampleRecord, still_images
from losh.schemas.prepared_reader import PreparedDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# left/right and the words built on them: lefts, leftmost, leftward(s), left-hand (the hyphen is a boundary)
_LEFT_RIGHT = re.compile(r"\b(left|right)(s|most|wards?|hand(?:ed)?)?\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """'left' <-> 'right' (case kept) in every word built on them ('leftmost' <-> 'rightmost'), as a
    horizontal flip changes what the words refer to."""
    def swap(m: re.Match) -> str:
        word = m.group(1)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            new = new.upper()
        elif word[0].isupper():
            new = new.capitalize()
        return new + (m.group(2) or "")
    return _LEFT_RIGHT.sub(swap, text)


@dataclass(frozen=True)
class Augment:
    """MTTR-style training augmentation: random short side among `scales` (long side capped) and a
    horizontal flip with probability `flip_p`."""

    scales: tuple[int, ...] = ()
    max_long_side: int = 576
    flip_p: float = 0.5


def evenly_spread(records: list[SampleRecord], max_samples: int) -> list[SampleRecord]:
    """A fixed subset of `max_samples` records spread evenly over the (sample_id-sorted) list, the same one at
    every evaluation; all of them when `max_samples` is 0 or not smaller."""
    if not 0 < max_samples < len(records):
        return records
    keep = np.linspace(0, len(records) - 1, max_samples).round().astype(int)
    return [records[i] for i in sorted(set(keep.tolist()))]


class RVOSDataset(Dataset):
    """Samples of one split of PREP as tensors; flows from PREP/flows when asked for. A split of still images
    (RefCOCO) gives clips of `clip_frames` frames made from each image (still_images.py), every frame supervised;
    without `clip_frames`, the image alone."""

    def __init__(self, prep: Path, split: str, *, with_flows: bool = False, augment: Augment | None = None,
                 seed: int = 0, max_samples: int = 0, clip_frames: int | None = None) -> None:
        self.data = PreparedDataset(prep, split)
        if len(self.data) == 0:
            raise ValueError(f"{prep} holds no {split} sample")
        if any(r.kind != "window" for r in self.data.records):
            raise ValueError(f"the {split} split of {prep} holds whole-video samples: they are predicted by "
                             "sliding windows in `losh evaluate`, not read as training windows")
        self.still = still_images(self.data.manifest, split)
        if self.still and with_flows:
            raise ValueError(f"the {split} split of {prep} holds still images: they have no optical flow (L_fbc "
                             "needs flows; train with --set loss.fbc=0)")
        self.clip_frames = clip_frames if self.still else None
        self.data.records = evenly_spread(self.data.records, max_samples)
        self.flows = None
        if with_flows:
            from losh.schemas.flow_reader import FlowReader
            self.flows = FlowReader(prep)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def check_readable(self) -> None:
        """Every shard (and flow shard) this dataset will read opens and matches its index: a damaged or missing
        file is named, with its repair, before a run starts rather than in a loader worker."""
        self.data.check_shards()
        if self.flows is not None:
            self.flows.check([(r.video_id, r.frame) for r in self.data.records])

    def __getitem__(self, index: int) -> dict:
        return self._read_clip([self.data.records[index]], key=index)[0]

    def _read_clip(self, records: list[SampleRecord], key: int) -> list[dict]:
        """Items of expressions of one clip: frames, flows and augmentation shared (one flip, one scale)."""
        samples = self.data.read_clip(records)
        first = samples[0]
        frames = first.frames                                     # (T, h, w, 3) uint8
        n, a = len(samples), len(first.record.targets)
        h, w = frames.shape[1:3]
        # [long_1 (A), short_1 (A), ..., long_n, short_n, instances (A*N)]: flipped and resized together
        masks = np.concatenate([m for s in samples for m in (s.long_masks, s.short_masks)]
                               + [first.instance_masks.reshape(-1, h, w)])
        texts = [(s.record.long, s.record.short) for s in samples]
        annotated, supervised = first.annotated_index, list(first.record.targets)
        # per-item randomness from (seed, epoch, index): reproducible and worker-count independent
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + key)
        if self.clip_frames:
            # a still image: the clip SgMg makes of it, every frame supervised (the masks moved with their frame)
            frames, masks = still_image_clip(frames[0], masks, self.clip_frames,
                                             np.random.default_rng(rng.getrandbits(64)))
            masks = np.concatenate([masks[:, :2 * n].transpose(1, 0, 2, 3).reshape(-1, h, w),
                                    masks[:, 2 * n:].reshape(-1, h, w)])
            a = self.clip_frames
            annotated, supervised = a // 2, list(range(a))
        flows = valid = None
        if self.flows is not None:
            flows, valid = self.flows.read(first.record.video_id, first.record.frame)  # (4, 2, gh, gw) grid px
            flows = rescale_vectors(flows, flows.shape[-2:], frames.shape[1:3])   # -> pixels of the stored frames
        flipped = False
        if self.augment is not None and rng.random() < self.augment.flip_p:
            flipped = True
            frames = frames[:, :, ::-1]
            masks = masks[:, :, ::-1]
            texts = [(swap_left_right(long), swap_left_right(short)) for long, short in texts]
            if flows is not None:
                flows = hflip_flows(flows)
        frames_t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)   # (T, 3, h, w) uint8
        masks_t = torch.from_numpy(np.ascontiguousarray(masks))
        if self.augment is not None and self.augment.scales:
            frames_t, masks_t, flows = self._resize(frames_t, masks_t, flows, rng.choice(self.augment.scales))
        instances = masks_t[2 * n * a:]
        shared = {"frames": frames_t, "instance_masks": instances.reshape(a, -1, *instances.shape[-2:]),
                  "annotated_index": annotated, "supervised": supervised, "flipped": flipped}
        if flows is not None:
            shared["flows"] = torch.from_numpy(np.ascontiguousarray(flows, dtype=np.float32))
            shared["flow_valid"] = torch.from_numpy(np.asarray(valid, dtype=bool))
        return [{"sample_id": s.record.sample_id, "long_text": long, "short_text": short,
                 "long_mask": masks_t[2 * a * i:2 * a * i + a], "short_mask": masks_t[2 * a * i + a:2 * a * (i + 1)],
                 "referred_index": s.record.referred_index, **shared}
                for i, (s, (long, short)) in enumerate(zip(samples, texts))]

    def _resize(self, frames, masks, flows, short_side: int):
        h, w = frames.shape[-2:]
        scale = min(short_side / min(h, w), self.augment.max_long_side / max(h, w))
        if abs(scale - 1.0) < 1e-6:
            return frames, masks, flows
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        frames = F.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False,
                               antialias=scale < 1).round().clamp(0, 255).to(torch.uint8)
        masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0].bool()
        if flows is not None:
            # vectors are in frame pixels: they scale with the frame (the grid itself is resampled by the loss)
            flows = rescale_vectors(flows, (h, w), size)
        return frames, masks, flows


class ClipDataset(RVOSDataset):
    """Items grouped by clip: the expressions of one (video, annotated frame), at most
    `max_expressions` to an item (a clip with more is split into near-equal parts), so an epoch still
    visits every sample once. The frames are read, augmented and, in the model, run through the
    backbone once for all expressions of the clip; those expressions, which refer to different objects
    of the same frames, are then in the same batch."""

    def __init__(self, prep: Path, split: str, *, max_expressions: int, with_flows: bool = False,
                 augment: Augment | None = None, seed: int = 0, max_samples: int = 0,
                 clip_frames: int | None = None) -> None:
        if max_expressions < 1:
            raise ValueError(f"max_expressions must be >= 1, got {max_expressions}")
        super().__init__(prep, split, with_flows=with_flows, augment=augment, seed=seed, max_samples=max_samples,
                         clip_frames=clip_frames)
        by_clip: dict[tuple, list[int]] = {}
        for index, r in enumerate(self.data.records):
            by_clip.setdefault((r.video_id, tuple(r.window), tuple(r.target_frames)), []).append(index)
        self.groups: list[list[int]] = []
        for indices in by_clip.values():
            parts = -(-len(indices) // max_expressions)
            self.groups.extend(indices[part::parts] for part in range(parts))

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list[dict]:
        return self._read_clip([self.data.records[i] for i in self.groups[index]], key=index)


def collate(items: list[dict], tokenize: Callable | None = None) -> dict:
    """Pad a batch to its largest frame size (bottom/right, zeros); `valid_size` keeps the true sizes.
    Masks are per supervised position: long_mask/short_mask (B, A, H, W), instance_masks [(A, N, H, W)].
    With `tokenize` (the model's `TextEncoder.batch_tokenizer`), also the texts' token ids ("text_tokens")."""
    return _collate([[item] for item in items], with_clip_index=False, tokenize=tokenize)


def collate_clips(clips: list[list[dict]], tokenize: Callable | None = None) -> dict:
    """A batch of `ClipDataset` items: frames, flows and `valid_size` once per clip, the rest once per
    expression, and `clip_index` (one per expression) saying which clip's frames it refers to."""
    return _collate(clips, with_clip_index=True, tokenize=tokenize)


def _collate(clips: list[list[dict]], with_clip_index: bool, tokenize: Callable | None = None) -> dict:
    heads = [clip[0] for clip in clips]
    items = [item for clip in clips for item in clip]
    supervised = heads[0]["supervised"]
    if any(it["supervised"] != supervised for it in heads):
        raise ValueError("a batch must share its supervised window positions (samples of one data set do)")
    H = max(it["frames"].shape[-2] for it in heads)
    W = max(it["frames"].shape[-1] for it in heads)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, W - t.shape[-1], 0, H - t.shape[-2]))

    batch = {
        "sample_id": [it["sample_id"] for it in items],
        "frames": torch.stack([pad(it["frames"]) for it in heads]),
        "long_text": [it["long_text"] for it in items], "short_text": [it["short_text"] for it in items],
        "long_mask": torch.stack([pad(it["long_mask"]) for it in items]),
        "short_mask": torch.stack([pad(it["short_mask"]) for it in items]),
        "instance_masks": [pad(it["instance_masks"]) for it in items],
        "referred_index": torch.tensor([it["referred_index"] for it in items]),
        "annotated_index": torch.tensor([it["annotated_index"] for it in heads]),
        "supervised": list(supervised),
        "valid_size": torch.tensor([list(it["frames"].shape[-2:]) for it in heads]),
        "flipped": [it["flipped"] for it in items],
    }
    if with_clip_index:
        batch["clip_index"] = torch.tensor([c for c, clip in enumerate(clips) for _ in clip])
    if "flows" in heads[0]:
        # flows keep their own (coarser) grid; pad them by the same fraction of the frame
        fh = max(it["flows"].shape[-2] for it in heads)
        fw = max(it["flows"].shape[-1] for it in heads)
        batch["flows"] = torch.stack([F.pad(it["flows"], (0, fw - it["flows"].shape[-1], 0, fh - it["flows"].shape[-2]))
                                      for it in heads])
        batch["flow_valid"] = torch.stack([it["flow_valid"] for it in heads])
    if tokenize is not None:
        batch["text_tokens"] = tokenize(batch["long_text"], batch["short_text"])
    return batch


@functools.lru_cache(maxsize=8)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std (1, 1, 3, 1, 1) on `device`, made once (a copy to the GPU every step would wait
    for it)."""
    return tuple(torch.tensor(values).view(1, 1, 3, 1, 1).to(device) for values in (IMAGENET_MEAN, IMAGENET_STD))


def normalise_frames(frames: torch.Tensor, valid_size: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, T, 3, H, W) on any device -> float ImageNet-normalised; with `valid_size` (B, 2), the
    bottom/right padding that `collate` added is 0 after normalising, as DETR's NestedTensor pads the
    normalised tensor (collate's black padding would otherwise become -mean/std)."""
    mean, std = _mean_std(frames.device)
    out = (frames.float() / 255.0 - mean) / std
    if valid_size is not None:
        h = torch.arange(out.shape[-2], device=out.device)[None, :, None]
        w = torch.arange(out.shape[-1], device=out.device)[None, None, :]
        vs = valid_size.to(out.device)
        padding = (h >= vs[:, 0, None, None]) | (w >= vs[:, 1, None, None])      # (B, H, W)
        out = out.masked_fill(padding[:, None, None], 0.0)
    return out
