"""Checkpoint files: written atomically, read back with a check of their format, and the model they hold.

    model, ckpt = load_model("run/checkpoints/last.pt", torch.device("cpu"))   # ready for model.infer(...)
"""
from __future__ import annotations

from pathlib import Path

import torch

from losh.models.registry import build_model
from schemas.atomic import atomic_copy, atomic_path
from schemas.config import ModelConfig, with_overrides

CHECKPOINT_SCHEMA = "losh.checkpoint"
CHECKPOINT_VERSION = 1

__all__ = ["CHECKPOINT_SCHEMA", "CHECKPOINT_VERSION", "atomic_copy", "atomic_save", "load_checkpoint", "load_model",
           "model_from_checkpoint"]


def atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:   # not a PyTorch file at all (a text file, a truncated download, ...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a {CHECKPOINT_SCHEMA} v{CHECKPOINT_VERSION} checkpoint "
                         f"(cannot be read: {reason})") from e
    if not isinstance(ckpt, dict) or ckpt.get("schema") != CHECKPOINT_SCHEMA or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a {CHECKPOINT_SCHEMA} v{CHECKPOINT_VERSION} checkpoint")
    return ckpt


def load_model(checkpoint: Path, device: torch.device, *, use_ema: bool = True,
               inference_short_pathway: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The checkpoint's model in eval mode on `device`, with its weight average (`ema_decay` runs) unless `use_ema`
    is False; `inference_short_pathway` overrides the config's (it changes inference only, not the weights).
    Returns (model, the checkpoint's dict)."""
    ckpt = load_checkpoint(checkpoint)
    return model_from_checkpoint(ckpt, device, use_ema=use_ema, inference_short_pathway=inference_short_pathway), ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device, *, use_ema: bool = True,
                          inference_short_pathway: str | None = None) -> torch.nn.Module:
    """The model of a loaded checkpoint (`load_model` without the reading), in eval mode on `device`."""
    config = ModelConfig.from_dict(ckpt["model_config"])
    if inference_short_pathway is not None:
        config = with_overrides(config, {"inference_short_pathway": inference_short_pathway})
    model = build_model(config, load_pretrained=False)   # the checkpoint holds the trained backbone
    ema = ckpt.get("model_ema")
    model.load_state_dict(ema["weights"] if use_ema and ema is not None else ckpt["model"])
    return model.to(device).eval()
