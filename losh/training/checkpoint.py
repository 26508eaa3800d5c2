"""Checkpoint files: written atomically, read back with a check of their format, and the model they hold.

    model, ckpt = load_model("run/checkpoints/last.pt", torch.device("cpu"))   # ready for model.infer(...)

A checkpoint holds tensors and plain values only, and is read as data (`losh.schemas.torch_files`): a file that would
run code when loaded is refused, naming what it holds. Checkpoints written before the random-number states were
stored as tensors hold numpy's state as an array: those three numpy classes are admitted for them.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from losh.models.registry import build_model
from losh.schemas.atomic import atomic_copy, atomic_path
from losh.schemas.config import ModelConfig, with_overrides
from losh.schemas.torch_files import UnsafeFile, safe_torch_load

CHECKPOINT_SCHEMA = "losh.checkpoint"
CHECKPOINT_VERSION = 1

__all__ = ["CHECKPOINT_SCHEMA", "CHECKPOINT_VERSION", "UnsafeFile", "atomic_copy", "atomic_save", "capture_rng",
           "load_checkpoint", "load_model", "model_from_checkpoint", "restore_rng"]


def _legacy_numpy_classes() -> list:
    """What numpy's RNG state as an array pickles to (checkpoints of the first versions): an array, its dtype."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = safe_torch_load(path, allowed=_legacy_numpy_classes(), what="checkpoint", map_location=map_location)
    except UnsafeFile:
        raise
    except Exception as e:   # not a PyTorch file at all (a text file, a truncated download, ...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a {CHECKPOINT_SCHEMA} v{CHECKPOINT_VERSION} checkpoint "
                         f"(cannot be read: {reason})") from e
    if not isinstance(ckpt, dict) or ckpt.get("schema") != CHECKPOINT_SCHEMA or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a {CHECKPOINT_SCHEMA} v{CHECKPOINT_VERSION} checkpoint")
    return ckpt


def load_model(checkpoint: Path, device: torch.device, *, use_ema: bool = True,
               inference_short_pathway: str | None = None, text_encoder: str | None = None
               ) -> tuple[torch.nn.Module, dict]:
    """The checkpoint's model in eval mode on `device`, with its weight average (`ema_decay` runs) unless `use_ema`
    is False; `inference_short_pathway` overrides the config's (it changes inference only, not the weights);
    `text_encoder`: where this machine has the pretrained text encoder's local files, when the checkpoint's
    path is another machine's. Returns (model, the checkpoint's dict)."""
    ckpt = load_checkpoint(checkpoint)
    return model_from_checkpoint(ckpt, device, use_ema=use_ema, inference_short_pathway=inference_short_pathway,
                                 text_encoder=text_encoder), ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device, *, use_ema: bool = True,
                          inference_short_pathway: str | None = None, text_encoder: str | None = None
                          ) -> torch.nn.Module:
    """The model of a loaded checkpoint (`load_model` without the reading), in eval mode on `device`."""
    config = ModelConfig.from_dict(ckpt["model_config"])
    if inference_short_pathway is not None:
        config = with_overrides(config, {"inference_short_pathway": inference_short_pathway})
    if text_encoder is not None and config.text.pretrained:
        config = with_overrides(config, {"text.encoder": str(text_encoder)})
    model = build_model(config, load_pretrained=False)   # the checkpoint holds the trained backbone
    ema = ckpt.get("model_ema")
    model.load_state_dict(ema["weights"] if use_ema and ema is not None else ckpt["model"])
    return model.to(device).eval()


def capture_rng() -> dict:
    """Python's, numpy's and torch's random states as tensors and plain values (a checkpoint is data only)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    """The states of `capture_rng` (or of a checkpoint that stored numpy's as an array) back in place."""
    random.setstate(_as_tuples(state["python"]))
    name, keys, position, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), int(position), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])


def _as_tuples(value):
    """random.setstate wants tuples where a round trip may have made lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
