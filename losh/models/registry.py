"""The one place that knows every base model: a config's `architecture` -> its (model, criterion) classes.

    model = build_model(config)          # LoSh-M / MTTR ("mttr") or LoSh-S / SgMg ("sgmg")
    criterion = build_criterion(config)

A third base model is one folder beside `losh_m/` and `losh_s/` (its model and criterion, built on
`losh.models.shared`) and one line in `ARCHITECTURES` (and its name in `schemas.config.Architecture`).
"""
from __future__ import annotations

from torch import nn

from losh.models.losh_m.criterion import LoShMCriterion
from losh.models.losh_m.model import LoShM
from losh.models.losh_s.criterion import LoShSCriterion
from losh.models.losh_s.model import LoShS
from schemas.config import ModelConfig

# architecture -> (model class, criterion class); each model takes (config, load_pretrained), each criterion
# (config.loss, use_short_text)
ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mttr": (LoShM, LoShMCriterion),
    "sgmg": (LoShS, LoShSCriterion),
}


def _classes(config: ModelConfig) -> tuple[type[nn.Module], type[nn.Module]]:
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[config.architecture]


def build_model(config: ModelConfig, load_pretrained: bool = True) -> nn.Module:
    """The model of `config`. `load_pretrained=False` when a checkpoint's weights are loaded next (evaluation,
    resume): the backbone's pretrained file is then not needed; the frozen text encoder still comes from its
    local path or the Hugging Face cache."""
    return _classes(config)[0](config, load_pretrained)


def build_criterion(config: ModelConfig) -> nn.Module:
    """The training loss of `config`'s model."""
    return _classes(config)[1](config.loss, use_short_text=config.use_short_text)
