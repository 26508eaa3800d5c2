"""Published MTTR, SgMg and official LoSh files as losh checkpoints (`losh convert-checkpoint`).

    report = convert_checkpoint("mttr", "a2d_window8.pth.tar", "mttr_a2d.pt", trained_on="a2d")
    model = losh.load_model("mttr_a2d.pt")

The file is read as data only (`losh.schemas.torch_files`; SgMg's also holds its argparse options, admitted by name).
Every tensor it holds is renamed onto the model (`losh.models.<model>.published`) or dropped on a named list with
the reason; the config's dims come from the tensors' shapes on the format's preset (or `config`). Anything else is
refused with what was found: another model's file, a missing tensor, a tensor with no home, a shape that differs.
"""
from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from losh.models.registry import PUBLISHED_FORMATS, PublishedFormat, build_model
from losh.models.shared.published import NotThisFormat, listing
from losh.schemas.config import ModelConfig
from losh.schemas.presets import resolve_config
from losh.schemas.torch_files import safe_torch_load
from losh.training.checkpoint import CHECKPOINT_SCHEMA, CHECKPOINT_VERSION, atomic_save

# what a published file holds beyond tensors and plain values: SgMg saves its argparse options ("args")
PUBLISHED_FILE_CLASSES = [argparse.Namespace]


class ConversionRefused(ValueError):
    """The file is not the format asked for, or does not fit the model; the message says what was found."""


@dataclass
class ConversionReport:
    source: str
    source_format: str
    out: str
    config: ModelConfig
    tensors_read: int              # tensors in the published state dict
    tensors_mapped: int            # of them, renamed onto the model
    model_tensors: int             # tensors of the model, all filled
    dropped: dict[str, str] = field(default_factory=dict)   # their name -> why
    shared: dict[str, list[str]] = field(default_factory=dict)   # their name -> our names (one module, several homes)

    def lines(self) -> list[str]:
        lines = [f"{self.tensors_mapped} of {self.tensors_read} {PUBLISHED_FORMATS[self.source_format].title} "
                 f"tensors mapped onto all {self.model_tensors} of the model's ({self.config.name}, "
                 f"{self.config.backbone.variant} backbone, window {self.config.window})"]
        for theirs, ours in list(self.shared.items())[:1]:   # one module of theirs, several homes of ours
            lines.append(f"  {len(self.shared)} tensors each fill {len(ours)} of the model's, e.g. {theirs} -> "
                         f"{', '.join(ours)}")
        for reason, n in Counter(self.dropped.values()).items():
            lines.append(f"  dropped {n}: {reason}")
        return lines


def read_published(path: str | Path, source_format: str) -> dict[str, Tensor]:
    """The state dict of a published file of `source_format`; refuses another format's file, naming it."""
    fmt = _format(source_format)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        content = safe_torch_load(path, allowed=PUBLISHED_FILE_CLASSES, what="published checkpoint")
    except ValueError:
        raise
    except Exception as error:   # noqa: BLE001 - not a PyTorch file at all
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConversionRefused(f"{path}: not a PyTorch file ({reason})") from None
    if not isinstance(content, dict):
        raise ConversionRefused(f"{path}: holds a {type(content).__name__}, not {fmt.title}'s checkpoint dict")
    if content.get("schema") == CHECKPOINT_SCHEMA:
        raise ConversionRefused(f"{path}: already a {CHECKPOINT_SCHEMA} checkpoint: load it as it is")
    state = content.get(fmt.container_key)
    if state is None and content and all(isinstance(v, Tensor) for v in content.values()):
        state = content              # a bare state dict
    if not isinstance(state, dict):
        raise ConversionRefused(f"{path}: no {fmt.title} state dict under {fmt.container_key!r} (it holds "
                                f"{_keys(content)}){_hint(content, source_format)}")
    missing = [k for k in fmt.signature if k not in state]
    if missing:
        raise ConversionRefused(f"{path}: not {fmt.title}'s state dict: it has no {', '.join(missing)}"
                                f"{_hint(state, source_format)}")
    return state


def convert_state(state: dict[str, Tensor], source_format: str, base: ModelConfig | None = None,
                  trained_on: str | None = None, window: int | None = None, text_encoder: str | None = None
                  ) -> tuple[dict[str, Tensor], ModelConfig, ConversionReport]:
    """(our state dict, its config, the report) of a published state dict; the model is built to check that
    every one of its tensors is filled, with the shapes it has."""
    fmt = _format(source_format)
    base = base or resolve_config(fmt.base_preset)
    if trained_on is not None:
        if trained_on not in fmt.trained_on:
            raise ConversionRefused(f"--trained-on {trained_on}: {fmt.title} published weights for "
                                    f"{', '.join(fmt.trained_on)}")
        base = replace(base, window=fmt.trained_on[trained_on]["window"])
    if window is not None:
        base = replace(base, window=window)
    try:
        conversion, config = fmt.convert(state, base)
    except NotThisFormat as error:
        raise ConversionRefused(f"not {fmt.title}'s state dict: {error}") from None
    config = replace(config, name=base.name)
    if text_encoder is not None and config.text.pretrained:   # this machine's copy of the published RoBERTa
        config = replace(config, text=replace(config.text, encoder=str(text_encoder)))
    config.validate()
    model = build_model(config, load_pretrained=False)
    own = {k: v for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    missing = [k for k in own if k not in conversion.state]
    extra = [k for k in conversion.state if k not in own]
    if missing:
        raise ConversionRefused(f"the file lacks {len(missing)} tensors of {config.name}: {listing(missing)}")
    if extra:
        homeless = sorted({conversion.sources[k] for k in extra})
        raise ConversionRefused(f"{len(homeless)} tensors of the file have no place in {config.name} "
                                f"({listing(homeless)}): pass the config they belong to with --config")
    for key, tensor in own.items():
        theirs = conversion.state[key]
        if tuple(theirs.shape) != tuple(tensor.shape):
            raise ConversionRefused(f"{conversion.sources[key]} has shape {tuple(theirs.shape)}, {config.name}'s "
                                    f"{key} {tuple(tensor.shape)}")
        if key.endswith("relative_position_index") and not torch.equal(theirs, tensor):
            raise ConversionRefused(f"{conversion.sources[key]} is not the index of window "
                                    f"{config.backbone.window_size}")
    model.load_state_dict({**model.state_dict(), **conversion.state})
    sharing: dict[str, list[str]] = {}
    for ours, theirs in conversion.sources.items():
        sharing.setdefault(theirs, []).append(ours)
    report = ConversionReport(
        source="", source_format=source_format, out="", config=config, tensors_read=len(state),
        tensors_mapped=len(state) - len(conversion.dropped), model_tensors=len(own), dropped=dict(conversion.dropped),
        shared={k: v for k, v in sharing.items() if len(v) > 1})
    return model.state_dict(), config, report


def convert_checkpoint(source_format: str, source: str | Path, out: str | Path, *, config: str | None = None,
                       trained_on: str | None = None, window: int | None = None,
                       overwrite: bool = False, text_encoder: str | None = None) -> ConversionReport:
    """Reads a published file, converts it and writes the losh checkpoint `out` (atomically; an existing file
    only with `overwrite`). `config`: a preset spec or JSON config file the dims are read onto (default: the
    format's preset); `trained_on`: the data set the weights were trained on (window, evaluation resolution);
    `window`: the frames per window, where the file's publisher trained with another (MTTR's window-10 A2D file)."""
    fmt = _format(source_format)
    source, out = Path(source), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    if out.resolve() == source.resolve():
        raise ConversionRefused("the converted checkpoint would replace the published file: choose another OUT")
    state = read_published(source, source_format)
    base = resolve_config(config) if config else None
    weights, model_config, report = convert_state(state, source_format, base, trained_on, window, text_encoder)
    preparation = None
    if trained_on is not None:
        values = fmt.trained_on[trained_on]
        preparation = {"dataset": trained_on, "window": model_config.window,
                       "resolution": {"short_side": values["short_side"], "max_long_side": values["max_long_side"]}}
    atomic_save({
        "schema": CHECKPOINT_SCHEMA, "version": CHECKPOINT_VERSION, "model_config": model_config.to_dict(),
        "model": weights, "model_ema": None, "epoch": 0, "global_step": 0, "data_preparation": preparation,
        "converted_from": {"format": source_format, "file": source.name, "sha256": _sha256(source),
                           "trained_on": trained_on, "tensors": report.tensors_read, "dropped": report.dropped},
    }, out)
    report.source, report.out = str(source), str(out)
    return report


def _format(name: str) -> PublishedFormat:
    if name not in PUBLISHED_FORMATS:
        raise ConversionRefused(f"unknown format {name!r}; one of {', '.join(PUBLISHED_FORMATS)}")
    return PUBLISHED_FORMATS[name]


def _hint(content: dict, asked: str) -> str:
    """Which other format the content looks like, if any."""
    for name, fmt in PUBLISHED_FORMATS.items():
        if name == asked or fmt.convert is PUBLISHED_FORMATS[asked].convert:
            continue
        state = content.get(fmt.container_key, content)
        if isinstance(state, dict) and all(k in state for k in fmt.signature):
            return f"; it looks like {fmt.title}'s: --from {name}"
    return ""


def _keys(content: dict) -> str:
    return listing([str(k) for k in content]) or "nothing"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
