"""Training settings (optimiser, schedule, data, AMP): a validated, versioned dataclass saved in
every run and checkpoint. Defaults are MTTR's A2D-Sentences recipe with the paper's batch 3."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from losh.schemas.prepared import SPLITS

TRAIN_SCHEMA = "losh.train"
TRAIN_VERSION = 1
AMP_MODES = ("bf16", "fp16", "off")


# Settings that may differ when a run is resumed: how long it runs, how often it evaluates, checkpoints and
# logs, and how many loader workers read (items do not depend on the worker count). Anything else would
# make the resumed run another run (and what it evaluates on, which best.pt compares across epochs).
SAFE_TO_CHANGE_ON_RESUME = ("epochs", "max_steps", "eval_every", "checkpoint_every_steps", "log_every_steps",
                            "num_workers", "log", "log_images_every")
BEST_METRICS = ("mean_iou", "overall_iou", "map", "jf", "j", "f")
LOG_CHOICES = ("tensorboard", "none")   # where a run's curves go besides metrics.jsonl


class TrainConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 70
    batch_size: int = 3                    # the paper's batch (per process): clips when expressions_per_clip > 1
    expressions_per_clip: int = 1          # 1: a sample is one expression (MTTR); K > 1: an item is a clip with up
                                           # to K of its expressions, one backbone pass for all of them
    lr: float = 1e-4
    backbone_lr: float = 1e-5
    text_encoder_lr: float = 5e-5          # used only when the text encoder is not frozen (MTTR)
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    lr_milestones: tuple[int, ...] = (50,)  # MTTR on A2D: x0.4 at epoch 50
    lr_gamma: float = 0.4
    lr_warmup_steps: int = 0               # >0: the lr rises linearly over the first N optimiser steps; 0: off (MTTR)
    amp: str = "bf16"                      # on CUDA; the CPU runs float32
    seed: int = 42
    num_workers: int = 4
    flip_p: float = 0.5
    scales: tuple[int, ...] = ()           # random short side per sample; () keeps the prepared size (MTTR)
    max_long_side: int = 576
    checkpoint_every_steps: int = 0        # 0: at the end of each epoch only
    log_every_steps: int = 10
    max_steps: int = 0                     # >0 stops after this many optimiser steps (smoke runs, benchmarks)
    deterministic: bool = False            # bit-reproducible runs (slower: e.g. Swin's bias-table backward)
    ema_decay: float = 0.0                 # >0: also keep an exponential moving average of the weights, which
                                           # evaluation then uses; 0: off (MTTR)
    eval_every: int = 0                    # >0: evaluate every N epochs (and after the last), log it, keep best.pt
    eval_split: str = "test"
    eval_samples: int = 0                  # >0: a fixed, evenly spread subset of that many samples; 0: the split
    best_metric: str = "mean_iou"          # which evaluation metric best.pt maximises
    log: str = "tensorboard"               # RUN/tensorboard event files too (metrics.jsonl is always written)
    log_images_every: int = 1              # validation overlays every N validations (0: none)


    def validate(self) -> "TrainSettings":
        def bad(msg: str) -> TrainConfigError:
            return TrainConfigError(f"train settings: {msg}")
        for name in ("epochs", "batch_size", "expressions_per_clip"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1")
        for name in ("lr", "backbone_lr", "text_encoder_lr"):
            if getattr(self, name) <= 0:
                raise bad(f"{name} must be > 0")
        if self.amp not in AMP_MODES:
            raise bad(f"amp must be one of {AMP_MODES}")
        if not 0 <= self.flip_p <= 1:
            raise bad("flip_p must be in [0, 1]")
        if any(m < 1 for m in self.lr_milestones):
            raise bad("lr_milestones are epochs >= 1")
        if not 0 <= self.ema_decay < 1:
            raise bad("ema_decay must be in [0, 1) (0 turns the weight average off)")
        if min(self.num_workers, self.checkpoint_every_steps, self.max_steps, self.eval_every, self.eval_samples,
               self.lr_warmup_steps) < 0:
            raise bad("num_workers, checkpoint_every_steps, max_steps, eval_every, eval_samples and lr_warmup_steps "
                      "must be >= 0")
        if self.eval_split not in SPLITS:
            raise bad(f"eval_split must be one of {SPLITS}")
        if self.best_metric not in BEST_METRICS:
            raise bad(f"best_metric must be one of {BEST_METRICS}")
        if self.log not in LOG_CHOICES:
            raise bad(f"log must be one of {LOG_CHOICES}")
        if self.log_every_steps < 1 or self.log_images_every < 0:
            raise bad("log_every_steps must be >= 1 and log_images_every >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"schema": TRAIN_SCHEMA, "version": TRAIN_VERSION, **asdict(self)}

    def changes_from(self, run: "TrainSettings") -> tuple[dict[str, tuple], dict[str, tuple]]:
        """(safe, unsafe) settings that differ from the run's, as {name: (run's value, this value)}."""
        mine, theirs = asdict(self), asdict(run)
        changed = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        safe = {k: v for k, v in changed.items() if k in SAFE_TO_CHANGE_ON_RESUME}
        return safe, {k: v for k, v in changed.items() if k not in safe}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainSettings":
        d = dict(d)
        if d.pop("schema", TRAIN_SCHEMA) != TRAIN_SCHEMA or d.pop("version", TRAIN_VERSION) != TRAIN_VERSION:
            raise TrainConfigError(f"train settings: not {TRAIN_SCHEMA} version {TRAIN_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TrainConfigError(f"train settings: unknown fields {sorted(unknown)}")
        for key in ("lr_milestones", "scales"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d).validate()
