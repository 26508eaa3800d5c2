"""Checkpoint files: written atomically, read back with a check of their format."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

CHECKPOINT_SCHEMA = "losh.checkpoint"
CHECKPOINT_VERSION = 1


def atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


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
