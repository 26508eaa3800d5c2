"""A run's curves as TensorBoard event files in RUN/tensorboard (`losh train --log tensorboard`, the default), beside
metrics.jsonl, its machine-readable twin. SgMg and ReferFormer log this way; `tensorboard --logdir runs/` shows
every run.

Only rank 0 writes, at the steps where the loop already reads its losses back (every `log_every_steps`), so the
curves cost no extra host sync. Every event carries the run's global step; a resumed run opens the folder with
`purge_step` = its checkpoint's step + 1, so that what a killed run wrote past its last checkpoint is dropped when
the events are read and the steps read back strictly increasing, without duplicates.

Without the tensorboard package the run goes on (metrics.jsonl holds every value) and says once how to add it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

TENSORBOARD_DIR = "tensorboard"
ENABLE_HINT = "pip install 'losh[tensorboard]'"
GIB = 1024 ** 3
_said_missing = False


class TensorBoardLog:
    """Scalars and pictures of one run, by global step."""

    def __init__(self, writer) -> None:
        self.writer = writer

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def picture(self, tag: str, step: int, picture_rgb: np.ndarray) -> None:
        self.writer.add_image(tag, picture_rgb, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(run: Path, log: str, resume_step: int, say: Callable[[str], None]) -> TensorBoardLog | None:
    """The run's TensorBoard log (None with `log` "none", or where tensorboard is not installed: said once a
    process). Events past `resume_step` that an earlier, killed process wrote are purged."""
    global _said_missing
    if log == "none":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _said_missing:
            _said_missing = True
            say(f"note: no TensorBoard curves: the tensorboard package is not installed ({ENABLE_HINT}); "
                f"metrics.jsonl holds every value (or pass --log none)")
        return None
    return TensorBoardLog(SummaryWriter(str(Path(run) / TENSORBOARD_DIR), purge_step=resume_step + 1))


def loss_scalars(means: dict[str, float]) -> dict[str, float]:
    """Every loss term apart (loss_dice_long -> loss/dice_long) and the weighted total (loss/total)."""
    return {("loss/total" if key == "loss" else f"loss/{key.removeprefix('loss_')}"): value
            for key, value in means.items()}


def learning_rates(optimizer: torch.optim.Optimizer, warm: float) -> dict[str, float]:
    """The rate of each parameter group (backbone, text_encoder, rest), warm-up included."""
    return {f"lr/{group.get('name', index)}": group["lr"] * warm for index, group in enumerate(optimizer.param_groups)}


def cuda_memory(device: torch.device) -> dict[str, float]:
    """Memory the run holds on its GPU now and at its peak since the last call (GiB); nothing off CUDA."""
    if device.type != "cuda":
        return {}
    values = {"cuda/allocated_gib": torch.cuda.memory_allocated(device) / GIB,
              "cuda/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
              "cuda/reserved_gib": torch.cuda.memory_reserved(device) / GIB}
    torch.cuda.reset_peak_memory_stats(device)
    return values


def validation_scalars(metrics: dict) -> dict[str, float]:
    """The validation's numbers (val/mean_iou, val/precision@0.5, val/jf, ...)."""
    from losh.evaluation.frame_metrics import METRIC_KEYS

    return {f"val/{key}": float(metrics[key]) for key in METRIC_KEYS
            if key != "num_images" and isinstance(metrics.get(key), (int, float))}


def validation_number(epoch: int, eval_every: int) -> int:
    """Which validation (1, 2, ...) runs after `epoch`: every `eval_every` epochs, and after the last one."""
    return -(-epoch // eval_every)
