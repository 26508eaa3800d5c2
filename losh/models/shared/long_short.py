"""LoSh's long-short pathway, as every base model runs it (paper 3.2-3.4, 3.8).

A batch holds clips and texts: each long expression (and, in training, its short expression) refers to one
clip; several texts of a clip share one backbone pass (`clip_index`). Both pathways then run through the
base model's multimodal parts, the short one only where the config uses short text. What is shared here:

- `cross_attention_layers`: where the long-short cross-attention replaces self-attention (paper 3.4);
- `frames_per_text`: the input checks, the backbone pass per clip and each text's view of it, and which
  window positions are decoded;
- `short_texts_for_inference`: the short texts inference runs through the encoder (paper 3.8: the short
  prediction head is off, the short text may still feed the long pathway's cross-attention);
- `sentence_feature`, `resize_padding`: the pooled text feature and padding masks at a feature map's size;
- `fbc_outputs`: what L_fbc (eq. 6) reads from a model's outputs;
- `take_positions`: window positions of a tensor without a host -> device copy of their indices;
- `select_best_query`: the inference selection (each query's reference score averaged over the decoded frames,
  the best query's masks), the same for every base model.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.schemas.config import ModelConfig


class TextFrames(NamedTuple):
    """The backbone's features of a batch, seen per text."""

    clip_features: list[Tensor]   # per level (clips, T, C, h, w): the backbone's output, once per clip
    clip_padding: Tensor | None   # (clips, H, W) True on padding; None: no frame is padded
    features: list[Tensor]        # per level (B, T, C, h, w): each text's clip
    padding: Tensor               # (B, H, W)
    frame_indices: list[int]      # the window positions decoded
    selected: list[Tensor]        # per level (B*T', C, h, w): the decoded frames, text-major


def cross_attention_layers(num_layers: int) -> list[int]:
    """0-based indices of the even-numbered (1-based) encoder layers, where CA replaces SA (paper 3.4)."""
    return [index for index in range(num_layers) if index % 2 == 1]


def frames_per_text(backbone: nn.Module, frames: Tensor, texts: int, annotated_index: int | None,
                    padding_mask: Tensor | None, clip_index: Tensor | None, supervised: Sequence[int] | None,
                    decode_frames: str) -> TextFrames:
    """Checks the inputs, runs the backbone once per clip and gives each text its clip's features (several
    expressions of a clip share one pass; their gradients add up in it). Decoded frames: the annotated and
    supervised positions when `decode_frames` is "annotated" (MTTR and SgMg on A2D), else the whole window.
    `clip_index` is best given on the host (its check then needs nothing back from the GPU); `padding_mask` None:
    no frame is padded."""
    clips, t = frames.shape[:2]
    if clip_index is None and texts != clips:
        raise ValueError(f"{clips} clips but {texts} long texts")
    if clip_index is not None and (clip_index.shape != (texts,) or (texts and not 0 <= int(clip_index.min()) <=
                                                                    int(clip_index.max()) < clips)):
        raise ValueError(f"clip_index must hold one clip of 0..{clips - 1} for each of the {texts} texts, "
                         f"got {clip_index.tolist()}")
    wanted = ([] if annotated_index is None else [annotated_index]) + list(supervised or [])
    if not all(0 <= i < t for i in wanted):
        raise ValueError(f"annotated/supervised positions {wanted} outside the window of {t} frames")
    clip_padding = padding_mask
    if padding_mask is None:
        padding_mask = torch.zeros((clips, *frames.shape[-2:]), dtype=torch.bool, device=frames.device)
    clip_features = backbone(frames)
    features, padding = clip_features, padding_mask
    if clip_index is not None:
        clip_index = clip_index.to(frames.device, non_blocking=True)   # checked above: on the host, no sync
        features = [level.index_select(0, clip_index) for level in clip_features]
        padding = padding_mask.index_select(0, clip_index)
    frame_indices = sorted(set(wanted)) if decode_frames == "annotated" and wanted else list(range(t))
    selected = [take_positions(level, frame_indices).flatten(0, 1) for level in features]
    return TextFrames(clip_features, clip_padding, features, padding, frame_indices, selected)


def short_texts_for_inference(config: ModelConfig, short_texts: Sequence[str] | None) -> Sequence[str] | None:
    """The short texts inference runs through the encoder: the given ones where the long pathway reads them
    (`inference_short_pathway` "encoder" with long <- short CA), else None."""
    if not config.inference_uses_short_text:
        return None
    if short_texts is None:
        raise ValueError("this model runs the short text through the encoder at inference "
                         "(inference_short_pathway = 'encoder'): pass short_texts (e.g. the tagger's), "
                         "or use a config with inference_short_pathway = 'none'")
    return short_texts


def take_positions(tensor: Tensor, positions: Sequence[int], dim: int = 1) -> Tensor:
    """`tensor`'s entries `positions` along `dim` (e.g. the supervised frames of a window). `x[:, [1, 3]]` would
    copy the list to the GPU as an index and wait for it; consecutive positions are a slice (a view), others an
    index copied without waiting."""
    positions = list(positions)
    if positions and positions == list(range(positions[0], positions[-1] + 1)):
        return tensor.narrow(dim, positions[0], len(positions))
    index = torch.tensor(positions, dtype=torch.long).to(tensor.device, non_blocking=True)
    return tensor.index_select(dim, index)


def sentence_feature(text: Tensor, padding: Tensor) -> Tensor:
    """Mean of the text tokens that are not padding: (N, S, D) -> (N, D)."""
    keep = (~padding).unsqueeze(-1).to(text.dtype)
    return (text * keep).sum(1) / keep.sum(1).clamp(min=1)


def resize_padding(padding_mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, H, W) bool padding -> (N, h, w) at a feature map's size (nearest)."""
    return F.interpolate(padding_mask[:, None].float(), size=tuple(size)).to(torch.bool)[:, 0]


def fbc_outputs(clip_features: list[Tensor], clip_padding: Tensor | None, level: int) -> dict:
    """What L_fbc reads from a model's outputs: the visual features of `loss.fbc_level` and their padding (None
    when no frame is padded)."""
    features = clip_features[level]
    padding = resize_padding(clip_padding, features.shape[-2:]) if clip_padding is not None else None
    return {"fbc_features": features, "fbc_padding_mask": padding}


def select_best_query(frame_scores: Tensor, pred_masks: Tensor) -> dict[str, Tensor]:
    """The paper's selection (3.8): frame_scores (B, T', Q) each query's reference probability in each decoded
    frame, pred_masks (B, T', Q, h, w) -> "frame_scores", "scores" (B, Q) their mean over the frames,
    "best_query" (B,), "mask_logits" (B, T', h, w) the best query's masks."""
    scores = frame_scores.mean(dim=1)
    best = scores.argmax(dim=1)
    batch = torch.arange(best.shape[0], device=best.device)
    return {"frame_scores": frame_scores, "scores": scores, "best_query": best,
            "mask_logits": pred_masks[batch, :, best]}
