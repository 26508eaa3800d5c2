"""LoSh-M: MTTR with long and short text pathways (paper 3.2-3.8), and its MTTR baseline.

Inputs
    frames          (B, T, 3, H, W) float, normalised with the ImageNet mean/std; T = the window
                    (8), the annotated frame at window position `annotated_index` (MTTR's window
                    runs from f-1-w//2 to f-1+(w+1)//2, clamped, so that is w//2)
    long_texts      B long expressions; short_texts: B short expressions (training only)
    padding_mask    optional (B, H, W) bool, True on padded pixels (frames of different sizes)

`forward` (training) returns a dict:
    "long", "short"   per pathway ("short" only when the config uses short text and short texts are
                      given): {"pred_is_referred": (B, T', Q, 2) logits (class 0 = referred, 1 = not),
                      "pred_masks": (B, T', Q, H/4, W/4) mask logits at stride 4,
                      "aux_outputs": the same two keys for each earlier decoder layer}
    "frame_indices"   the window positions of the T' decoded frames: the annotated and supervised ones
                      when transformer.decode_frames == "annotated" (MTTR on A2D), else 0..T-1
    "annotated_index" as given; "supervised" the positions with masks (default [annotated_index]);
    "input_size" (H, W)
    "fbc_features"    (B, T, C, h, w) backbone features of every frame at loss.fbc_level (the F_v of
                      L_fbc: by default stride 16, the features projected into the transformer)
    "fbc_padding_mask" (B, h, w) bool or None

`infer` decodes the long pathway only (the short head is off, paper 3.8); with the config's
`inference_short_pathway = "encoder"` (default) the short text still runs through the multimodal encoder
to feed the long pathway's cross-attention, with "none" it is not encoded at all. It adds the paper's
selection: "frame_scores" (B, T', Q) each query's reference probability in each decoded frame, "scores" (B, Q)
their mean over the decoded frames, "best_query" (B,),
"mask_logits" (B, T', H, W) the best query's mask logits upsampled to the input size.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.backbone import VideoSwinBackbone
from losh.decoder import QueryDecoder
from losh.multimodal_transformer import LongShortEncoder
from losh.position_encoding import sine_position_encoding_2d
from losh.segmentation import MLP, FPNSpatialDecoder, dynamic_mask_logits
from losh.text_encoder import TextEncoder
from schemas.config import ModelConfig


class TextProjection(nn.Module):
    """Text features to the model width: linear, LayerNorm, dropout (MTTR's FeatureResizer)."""

    def __init__(self, input_dim: int, output_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(input_dim, output_dim)
        self.layer_norm = nn.LayerNorm(output_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))


class LoSh(nn.Module):
    def __init__(self, config: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        tc = config.transformer
        self.backbone = VideoSwinBackbone(config.backbone, load_pretrained)
        self.text_encoder = TextEncoder(config.text)
        self.video_proj = nn.Conv2d(self.backbone.out_channels[-1], tc.d_model, kernel_size=1)
        self.text_proj = TextProjection(self.text_encoder.hidden_size, tc.d_model, tc.dropout)
        self.encoder = LongShortEncoder(tc)
        self.decoder = QueryDecoder(tc)
        for module in (self.encoder, self.decoder.layers):
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)
        self.spatial_decoder = FPNSpatialDecoder(tc.d_model, self.backbone.out_channels[:-1][::-1],
                                                 tc.mask_kernel_dim)
        self.is_referred_head = nn.Linear(tc.d_model, 2)
        self.kernel_head = MLP(tc.d_model, tc.d_model, tc.mask_kernel_dim, num_layers=2)

    # ------------------------------------------------------------------------------ public API

    def forward(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None = None,
                *, annotated_index: int, padding_mask: Tensor | None = None,
                clip_index: Tensor | None = None, supervised: Sequence[int] | None = None) -> dict:
        """frames (B, T, 3, H, W), one text per clip; or, with `clip_index` (N,), N texts of which text i
        refers to clip clip_index[i] (several expressions of a clip share one backbone pass). Outputs are
        per text; `fbc_features` (visual, text-independent) stay per clip. `annotated_index`: the window
        position L_fbc is anchored at; `supervised`: the positions with masks (default: the annotated one),
        all decoded also when the config decodes only annotated frames."""
        use_short = self.config.use_short_text and short_texts is not None
        return self._run(frames, long_texts, short_texts if use_short else None, annotated_index, padding_mask,
                         keep_fbc_features=True, clip_index=clip_index, supervised=supervised)

    @torch.no_grad()
    def infer(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None = None, *,
              annotated_index: int | None, padding_mask: Tensor | None = None, upsample: bool = True,
              clip_index: Tensor | None = None) -> dict:
        """The long pathway's prediction (the short prediction head is off, paper 3.8). With
        `inference_short_pathway = "encoder"` the short texts still run through the multimodal encoder,
        as the keys/values of the long pathway's cross-attention; short_texts are ignored otherwise.
        `annotated_index` None: every frame of the window is decoded (whole-video inference), whatever
        the config's `decode_frames`."""
        short = short_texts_for_inference(self.config, short_texts)
        out = self._run(frames, long_texts, short, annotated_index, padding_mask, keep_fbc_features=False,
                        clip_index=clip_index, decode_short=False)
        long = out["long"]
        frame_scores = long["pred_is_referred"].softmax(-1)[..., 0]        # (B, T', Q)
        scores = frame_scores.mean(dim=1)                                   # (B, Q), averaged over frames
        best = scores.argmax(dim=1)
        batch = torch.arange(best.shape[0], device=best.device)
        masks = long["pred_masks"][batch, :, best]  # (B, T', h, w)
        if upsample:
            masks = F.interpolate(masks, size=frames.shape[-2:], mode="bilinear", align_corners=False)
        return {**long, "frame_scores": frame_scores, "scores": scores, "best_query": best, "mask_logits": masks,
                "frame_indices": out["frame_indices"], "annotated_index": annotated_index}

    # ---------------------------------------------------------------------------------- internals

    def _run(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None,
             annotated_index: int, padding_mask: Tensor | None, keep_fbc_features: bool,
             clip_index: Tensor | None = None, decode_short: bool = True,
             supervised: Sequence[int] | None = None) -> dict:
        b = len(long_texts)
        visual = frames_per_text(self.backbone, frames, b, annotated_index, padding_mask, clip_index, supervised,
                                 self.config.transformer.decode_frames)
        clip_features, clip_padding, features = visual.clip_features, visual.clip_padding, visual.features
        padding_mask, frame_indices, selected = visual.padding, visual.frame_indices, visual.selected
        n_frames = len(frame_indices)
        paddings = [_resize_padding(padding_mask, level.shape[-2:]) for level in features]

        # video tokens of the decoded frames, (B*T') ordered sample-major
        video = self.video_proj(selected[-1])
        h, w = video.shape[-2:]
        video_padding = paddings[-1].repeat_interleave(n_frames, dim=0)
        video_pos = sine_position_encoding_2d(video_padding, video.shape[1]).flatten(1, 2)
        video = video.flatten(2).transpose(1, 2)

        long_text, long_pad, short_text, short_pad = self.text_encoder(long_texts, short_texts)
        long_seq = self._sequence(video, video_pos, video_padding, long_text, long_pad, n_frames)
        short_seq = (self._sequence(video, video_pos, video_padding, short_text, short_pad, n_frames)
                     if short_text is not None else (None, None, None))
        long_memory, short_memory = self.encoder(*long_seq, *short_seq)

        pathways = {"long": (long_memory, long_seq)}
        if short_memory is not None and decode_short:
            pathways["short"] = (short_memory, short_seq)
        # both pathways through the shared decoder, spatial decoder and heads in one batched call
        memory = torch.cat([m for m, _ in pathways.values()])
        memory_pos = torch.cat([s[1] for _, s in pathways.values()])
        memory_padding = torch.cat([s[2] for _, s in pathways.values()])
        copies = len(pathways)
        context = memory[:, : h * w].transpose(1, 2).reshape(memory.shape[0], -1, h, w)
        finer = [level.repeat(copies, 1, 1, 1) for level in selected[:-1][::-1]]
        mask_features = self.spatial_decoder(context, finer)
        query_text = None
        if self.config.transformer.text_conditioned_queries:
            query_text = torch.cat([_sentence_feature(s[0][:, h * w:], s[2][:, h * w:]) for _, s in pathways.values()])
        decoded = self.decoder(memory, memory_pos, memory_padding, query_text)  # (L, N, Q, D)
        masks = dynamic_mask_logits(self.kernel_head(decoded), mask_features)
        logits = self.is_referred_head(decoded)

        out: dict = {"frame_indices": frame_indices, "annotated_index": annotated_index,
                     "supervised": list(supervised) if supervised else [annotated_index],
                     "input_size": tuple(frames.shape[-2:])}
        per_pathway = b * n_frames
        for index, name in enumerate(pathways):
            part = slice(index * per_pathway, (index + 1) * per_pathway)
            out[name] = _layer_outputs(logits[:, part], masks[:, part], b, n_frames)
        if keep_fbc_features:
            out.update(fbc_outputs(clip_features, clip_padding, self.config.loss.fbc_level))
        return out

    def _sequence(self, video: Tensor, video_pos: Tensor, video_padding: Tensor, text: Tensor,
                  text_padding: Tensor, n_frames: int) -> tuple[Tensor, Tensor, Tensor]:
        """[video tokens; text tokens] per decoded frame, with position encodings and padding."""
        text = self.text_proj(text).repeat_interleave(n_frames, dim=0)
        text_padding = text_padding.repeat_interleave(n_frames, dim=0)
        sequence = torch.cat((video, text), dim=1)
        pos = torch.cat((video_pos, torch.zeros_like(text)), dim=1)
        padding = torch.cat((video_padding.flatten(1), text_padding), dim=1)
        return sequence, pos, padding

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def short_texts_for_inference(config: ModelConfig, short_texts: Sequence[str] | None) -> Sequence[str] | None:
    """The short texts inference runs through the encoder (both architectures): the given ones where the
    long pathway reads them (`inference_short_pathway` "encoder" with long <- short CA), else None."""
    if not config.inference_uses_short_text:
        return None
    if short_texts is None:
        raise ValueError("this model runs the short text through the encoder at inference "
                         "(inference_short_pathway = 'encoder'): pass short_texts (e.g. the tagger's), "
                         "or use a config with inference_short_pathway = 'none'")
    return short_texts


class TextFrames(NamedTuple):
    """The backbone's features of a batch, seen per text (both architectures)."""

    clip_features: list[Tensor]   # per level (clips, T, C, h, w): the backbone's output, once per clip
    clip_padding: Tensor          # (clips, H, W) True on padding
    features: list[Tensor]        # per level (B, T, C, h, w): each text's clip
    padding: Tensor               # (B, H, W)
    frame_indices: list[int]      # the window positions decoded
    selected: list[Tensor]        # per level (B*T', C, h, w): the decoded frames, text-major


def frames_per_text(backbone: nn.Module, frames: Tensor, texts: int, annotated_index: int | None,
                    padding_mask: Tensor | None, clip_index: Tensor | None, supervised: Sequence[int] | None,
                    decode_frames: str) -> TextFrames:
    """Checks the inputs, runs the backbone once per clip and gives each text its clip's features (several
    expressions of a clip share one pass; their gradients add up in it). Decoded frames: the annotated and
    supervised positions when `decode_frames` is "annotated" (MTTR and SgMg on A2D), else the whole window."""
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
    if padding_mask is None:
        padding_mask = torch.zeros((clips, *frames.shape[-2:]), dtype=torch.bool, device=frames.device)
    clip_features = backbone(frames)
    features, padding = clip_features, padding_mask
    if clip_index is not None:
        clip_index = clip_index.to(frames.device)
        features = [level.index_select(0, clip_index) for level in clip_features]
        padding = padding_mask.index_select(0, clip_index)
    frame_indices = sorted(set(wanted)) if decode_frames == "annotated" and wanted else list(range(t))
    selected = [level[:, frame_indices].flatten(0, 1) for level in features]
    return TextFrames(clip_features, padding_mask, features, padding, frame_indices, selected)


def _sentence_feature(text: Tensor, padding: Tensor) -> Tensor:
    """Mean of the (projected) text tokens that are not padding: (N, S, D) -> (N, D)."""
    keep = (~padding).unsqueeze(-1).to(text.dtype)
    return (text * keep).sum(1) / keep.sum(1).clamp(min=1)


def fbc_outputs(clip_features: list[Tensor], clip_padding: Tensor, level: int) -> dict:
    """What L_fbc reads from a model's outputs (both models): the visual features of `loss.fbc_level` and their
    padding (None when the clip has none)."""
    features = clip_features[level]
    padding = _resize_padding(clip_padding, features.shape[-2:]) if clip_padding.any() else None
    return {"fbc_features": features, "fbc_padding_mask": padding}


def _resize_padding(padding_mask: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(padding_mask[:, None].float(), size=tuple(size)).to(torch.bool)[:, 0]


def _layer_outputs(logits: Tensor, masks: Tensor, b: int, n_frames: int) -> dict:
    """(L, B*T', Q, ...) -> the last layer's dict with the earlier layers under "aux_outputs"."""
    layers = [{"pred_is_referred": lg.unflatten(0, (b, n_frames)), "pred_masks": mk.unflatten(0, (b, n_frames))}
              for lg, mk in zip(logits, masks)]
    return {**layers[-1], "aux_outputs": layers[:-1]}


def build_model(config: ModelConfig, load_pretrained: bool = True) -> nn.Module:
    """The model of `config`: LoSh-M/MTTR (architecture "mttr", this file) or LoSh-S/SgMg ("sgmg",
    `losh.sgmg.model`). `load_pretrained=False` when a checkpoint's weights are loaded next
    (evaluation, resume): the backbone's pretrained file is then not needed; the frozen text encoder
    still comes from its local path or the Hugging Face cache."""
    if config.architecture == "sgmg":
        from losh.sgmg.model import LoShS

        return LoShS(config, load_pretrained)
    return LoSh(config, load_pretrained)


def param_groups(model: nn.Module, lr: float, backbone_lr: float, weight_decay: float,
                 text_encoder_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups as MTTR: backbone at `backbone_lr`, the text encoder (when not frozen)
    at `text_encoder_lr` (default `backbone_lr`), everything else at `lr`; frozen parameters are left out."""
    groups = {"backbone": [], "text_encoder": [], "rest": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = name.split(".", 1)[0]
        groups[part if part in ("backbone", "text_encoder") else "rest"].append(parameter)
    lrs = {"rest": lr, "backbone": backbone_lr,
           "text_encoder": backbone_lr if text_encoder_lr is None else text_encoder_lr}
    return [{"name": name, "params": params, "lr": lrs[name], "weight_decay": weight_decay}
            for name, params in groups.items() if params]
