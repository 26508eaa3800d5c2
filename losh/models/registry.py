"""The one place that knows every base model: a config's `architecture` -> its (model, criterion) classes.

    model = build_model(config)          # LoSh-M / MTTR ("mttr") or LoSh-S / SgMg ("sgmg")
    criterion = build_criterion(config)

    fmt = PUBLISHED_FORMATS["sgmg"]      # a published file's format: its names onto ours

A third base model is one folder beside `losh_m/` and `losh_s/` (its model and criterion, built on
`losh.models.shared`) and one line in `ARCHITECTURES` (and its name in `losh.schemas.config.Architecture`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from losh.models.losh_m import published as mttr_published
from losh.models.losh_m.criterion import LoShMCriterion
from losh.models.losh_m.model import LoShM
from losh.models.losh_s import published as sgmg_published
from losh.models.losh_s.criterion import LoShSCriterion
from losh.models.losh_s.model import LoShS
from losh.models.shared.published import Conversion
from losh.schemas.config import ModelConfig

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


@dataclass(frozen=True)
class PublishedFormat:
    """A published checkpoint format: whose it is, the preset its config starts from, where its state dict sits in
    the file, the tensors that identify it, and its conversion (state dict, base config) -> (ours, config)."""

    title: str
    base_preset: str
    container_key: str
    signature: tuple[str, ...]
    convert: Callable[[Mapping[str, Tensor], ModelConfig], tuple[Conversion, ModelConfig]]
    # data set -> the window it was trained with and the resolution its evaluation resizes frames to
    trained_on: Mapping[str, dict]


_MTTR_DATA = {"a2d": {"window": 8, "short_side": 320, "max_long_side": 576},
              "refer-youtube-vos": {"window": 12, "short_side": 360, "max_long_side": 640}}
# SgMg: 5-frame windows; frames resized to 360 (long side <= 640) at evaluation; RefCOCO pre-training on images
_SGMG_DATA = {"a2d": {"window": 5, "short_side": 360, "max_long_side": 640},
              "refer-youtube-vos": {"window": 5, "short_side": 360, "max_long_side": 640},
              "refcoco": {"window": 5, "short_side": 360, "max_long_side": 640}}

PUBLISHED_FORMATS: dict[str, PublishedFormat] = {
    "mttr": PublishedFormat("MTTR", "mttr", mttr_published.CONTAINER_KEY, mttr_published.SIGNATURE,
                            mttr_published.convert, _MTTR_DATA),
    # the official LoSh code saves MTTR's names; its model is the `losh-m:official` preset
    "losh-official": PublishedFormat("official LoSh", "losh-m:official", mttr_published.CONTAINER_KEY,
                                     mttr_published.SIGNATURE, mttr_published.convert, _MTTR_DATA),
    "sgmg": PublishedFormat("SgMg", "sgmg", sgmg_published.CONTAINER_KEY, sgmg_published.SIGNATURE,
                            sgmg_published.convert, _SGMG_DATA),
}
