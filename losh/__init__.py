"""LoSh (CVPR 2024) for referring video object segmentation: models, training, evaluation and inference.

    import losh
    model = losh.load_model("run/checkpoints/last.pt", device="cuda")   # or a converted MTTR / SgMg file
    out = model.infer(frames, ["a man in a red shirt riding a bike"], annotated_index=None)

    losh/models/       LoSh-M (on MTTR), LoSh-S (on SgMg), the parts they share, the registry
    losh/data/         the prepared shards as PyTorch data
    losh/training/     the training loop, optimiser, EMA, checkpoints (and published files), devices
    losh/evaluation/   metrics and evaluators (A2D protocol, J&F, the Refer-YouTube-VOS submission)
    losh/inference/    whole-video inference and `losh predict`

docs/architecture.md is the map.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["load_model"]


def load_model(path: str | Path, device: str = "cpu", *, use_ema: bool = True):
    """The model of a losh checkpoint (trained here, or a published file converted by `losh convert-checkpoint`)
    in eval mode on `device`, ready for `model.infer(frames, texts, annotated_index=...)`; its weight average
    when the run kept one, unless `use_ema` is False. `model.config` is its config. The file is read as data only
    (a file that would run code is refused, naming what it holds)."""
    import torch

    from losh.training.checkpoint import load_model as load_checkpoint_model  # `import losh` stays light
    return load_checkpoint_model(Path(path), torch.device(device), use_ema=use_ema)[0]
