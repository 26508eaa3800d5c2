"""What the published MTTR and SgMg files share: Video Swin and RoBERTa under their own names, and the config
dims their tensors fix.

A conversion (`Conversion`) renames every tensor of a published state dict onto our names, or drops it on a
named list with the reason, and reads the dims of the config from the tensors' shapes. Each base model's own
names live in its folder (`losh_m/published.py`, `losh_s/published.py`); `losh.training.convert` runs them.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from torch import Tensor

from losh.models.shared.backbone import convert_swin_state_dict
from losh.schemas.config import SWIN_VARIANTS, BackboneConfig, TextConfig


class NotThisFormat(ValueError):
    """A file is not the published format asked for (another model's, a missing tensor, unknown tensors)."""


@dataclass
class Conversion:
    """Our state dict from a published one: `state` our names -> tensors, `dropped` their name -> why."""

    state: dict[str, Tensor] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)    # our name -> their name

    def put(self, ours: str, theirs: str, tensor: Tensor) -> None:
        self.state[ours] = tensor
        self.sources[ours] = theirs


# tensors a published file may hold that no model computes with: dropped by name, with the reason
DROPPED_EVERYWHERE: dict[str, str] = {
    r"(^|\.)total_ops$": "a FLOP counter thop leaves in the state dict",
    r"(^|\.)total_params$": "a parameter counter thop leaves in the state dict",
    r"embeddings\.position_ids$": "RoBERTa's position ids, a constant buffer transformers < 4.31 saved",
}


def drop_reason(key: str, extra: Mapping[str, str] = {}) -> str | None:
    """Why `key` is dropped (a pattern of DROPPED_EVERYWHERE or `extra` matches), else None."""
    for pattern, reason in {**DROPPED_EVERYWHERE, **extra}.items():
        if re.search(pattern, key):
            return reason
    return None


def rename_all(state: Mapping[str, Tensor], rename: Callable[[str], list[str] | None], format_name: str,
               extra_dropped: Mapping[str, str] = {}) -> Conversion:
    """Every tensor of `state` under the names `rename` gives it (one or more: a module they share among several
    of ours), or dropped with its reason; a tensor neither renamed nor dropped refuses the file."""
    conversion, unknown = Conversion(), []
    for key, tensor in state.items():
        reason = drop_reason(key, extra_dropped)
        if reason is not None:
            conversion.dropped[key] = reason
            continue
        targets = rename(key)
        if not targets:
            unknown.append(key)
            continue
        for target in targets:
            conversion.put(target, key, tensor)
    if unknown:
        raise NotThisFormat(f"{len(unknown)} tensors that {format_name} does not have: {listing(unknown)}")
    return conversion


def swin_key(key: str, num_stages: int) -> str | None:
    """A Video Swin key of the official code (as MTTR and SgMg hold it, without their prefix) -> ours."""
    if key.startswith("downsamples."):      # MTTR and SgMg keep the patch mergings in a list of their own
        return key if int(key.split(".")[1]) < num_stages - 1 else None
    converted = convert_swin_state_dict({key: None}, num_stages)
    return next(iter(converted), None)


def backbone_config(state: Mapping[str, Tensor], prefix: str, base: BackboneConfig, num_stages: int
                    ) -> BackboneConfig:
    """The Video Swin dims of a published state dict (keys `prefix` + official names): width, blocks and heads
    of the stages it holds; a stage it dropped (MTTR's 4th) keeps the variant's, else doubles the heads."""
    embed_dim = shape(state, f"{prefix}patch_embed.proj.weight")[0]
    depths, heads = [], []
    for stage in range(num_stages):
        blocks = {int(m.group(1)) for k in state
                  if (m := re.match(rf"{re.escape(prefix)}layers\.{stage}\.blocks\.(\d+)\.", k))}
        if not blocks:
            raise NotThisFormat(f"no Video Swin blocks of stage {stage} ({prefix}layers.{stage}.blocks.*)")
        depths.append(max(blocks) + 1)
        heads.append(shape(state, f"{prefix}layers.{stage}.blocks.0.attn.relative_position_bias_table")[1])
    window = tuple(base.window_size)
    table = shape(state, f"{prefix}layers.0.blocks.0.attn.relative_position_bias_table")[0]
    if table != (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1):
        raise NotThisFormat(f"Video Swin's relative position table has {table} rows, not the window {window}'s")
    variant = next((name for name, dims in SWIN_VARIANTS.items()
                    if dims["embed_dim"] == embed_dim and tuple(dims["depths"][:num_stages]) == tuple(depths)), None)
    if variant is not None:
        dims = SWIN_VARIANTS[variant]
        return replace(base, variant=variant, num_stages=num_stages, embed_dim=embed_dim,
                       depths=tuple(dims["depths"]), num_heads=tuple(dims["num_heads"]), weights=None,
                       require_weights=False)
    depths += base.depths[num_stages:]
    heads += [heads[-1] * 2 ** (i + 1) for i in range(4 - num_stages)]
    return replace(base, variant="custom", num_stages=num_stages, embed_dim=embed_dim, depths=tuple(depths),
                   num_heads=tuple(heads), weights=None, require_weights=False)


# the published RoBERTa checkpoints by their dims: (vocab, hidden, layers) -> name
KNOWN_TEXT_ENCODERS = {(50265, 768, 12): "roberta-base", (50265, 1024, 24): "roberta-large"}


def text_config(state: Mapping[str, Tensor], prefix: str, base: TextConfig) -> TextConfig:
    """The RoBERTa of a published state dict (keys `prefix` + transformers' names): a known one by name (its
    tokenizer and config come from its local files, as `TextEncoder` reads them), else a random RoBERTa of its
    dims (heads from `base`)."""
    vocab, hidden = shape(state, f"{prefix}embeddings.word_embeddings.weight")
    layers = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.", k)))
    intermediate = shape(state, f"{prefix}encoder.layer.0.intermediate.dense.weight")[0]
    positions = shape(state, f"{prefix}embeddings.position_embeddings.weight")[0]
    known = KNOWN_TEXT_ENCODERS.get((vocab, hidden, layers))
    if known is not None:
        encoder = base.encoder if base.pretrained and base.encoder not in KNOWN_TEXT_ENCODERS.values() else known
        return replace(base, encoder=encoder, pretrained=True)
    return replace(base, encoder="random-roberta", pretrained=False, vocab_size=vocab, hidden_size=hidden,
                   num_layers=layers, intermediate_size=intermediate, max_tokens=positions - 2)


def count(state: Mapping[str, Tensor], pattern: str) -> int:
    """1 + the largest index the first group of `pattern` takes among the keys (0 if none match)."""
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise NotThisFormat(f"it has no tensor {key}")
    return tuple(state[key].shape)


def listing(keys: list[str], limit: int = 5) -> str:
    """The first few of `keys`, and how many more."""
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
