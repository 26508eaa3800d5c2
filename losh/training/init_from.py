"""`losh train --init-from CKPT`: a new run (new optimiser, new schedule) that starts from a checkpoint's weights.

    report = initialise_from(model, "sgmg_refcoco.pt")                        # every tensor that fits
    report = initialise_from(model, "mttr_a2d.pt", parts=("backbone", "text_encoder", "text_proj"))

The checkpoint is a losh checkpoint (trained here, or a published file after `losh convert-checkpoint`); its
trained weights are read, not its weight average. A tensor of the model whose name the checkpoint holds (within
`parts`, prefixes of our names, when given) is loaded; the model's other tensors keep their fresh initialisation
("new"); the checkpoint's other tensors are "ignored". A tensor of the same name with another shape is refused,
named: the run would silently start from something else. A randomly initialised text encoder's trained tokenizer
comes with its weights (token ids mean nothing without it).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from losh.training.checkpoint import load_checkpoint

EXTRA_STATE = "_extra_state"


class InitMismatch(ValueError):
    """A checkpoint tensor has the name of one of the model's with another shape."""


@dataclass
class InitReport:
    checkpoint: str
    parts: list[str]
    loaded: list[str] = field(default_factory=list)     # the model's tensors now holding the checkpoint's
    new: list[str] = field(default_factory=list)        # the model's tensors left as initialised
    ignored: list[str] = field(default_factory=list)    # the checkpoint's tensors not used

    def line(self) -> str:
        within = f" (parts {', '.join(self.parts)})" if self.parts else ""
        return (f"init from {self.checkpoint}{within}: {len(self.loaded)} tensors loaded, {len(self.new)} newly "
                f"initialised, {len(self.ignored)} of the checkpoint's ignored")

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "parts": self.parts, "loaded": self.loaded, "new": self.new,
                "ignored": self.ignored}


def initialise_from(model: nn.Module, checkpoint: str | Path, parts: Sequence[str] = ()) -> InitReport:
    """Loads into `model` the tensors of `checkpoint` that it has (within `parts`); returns what was loaded."""
    source = load_checkpoint(Path(checkpoint))["model"]
    parts = [p.strip().rstrip(".") for p in parts if p.strip()]
    unmatched = [p for p in parts if not any(_within(k, [p]) for k in source)]
    if unmatched:
        raise ValueError(f"--init-parts {', '.join(unmatched)}: {checkpoint} has no tensor under that name "
                         f"(its parts: {', '.join(sorted({k.split('.')[0] for k in source}))})")
    own = model.state_dict()
    report = InitReport(str(checkpoint), list(parts))
    chosen: dict[str, Tensor] = {}
    for key, value in source.items():
        if key.endswith(EXTRA_STATE) or not isinstance(value, Tensor):
            continue
        if key not in own or not _within(key, parts):
            report.ignored.append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise InitMismatch(f"--init-from {checkpoint}: {key} has shape {tuple(value.shape)} there and "
                               f"{tuple(own[key].shape)} in this model's config: not the same model")
        chosen[key] = value
    # a module's extra state (the trained tokenizer) comes with its tensors
    for key, value in source.items():
        module = key[: -len(EXTRA_STATE)].rstrip(".")
        if key.endswith(EXTRA_STATE) and key in own and any(k.startswith(module + ".") for k in chosen):
            chosen[key] = value
    report.loaded = [k for k in own if k in chosen and not k.endswith(EXTRA_STATE)]
    report.new = [k for k, v in own.items() if k not in chosen and isinstance(v, Tensor)]
    model.load_state_dict({**own, **chosen})
    return report


def _within(key: str, parts: Sequence[str]) -> bool:
    return not parts or any(key == p or key.startswith(p + ".") for p in parts)
