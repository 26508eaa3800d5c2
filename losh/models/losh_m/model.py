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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.models.losh_m.decoder import QueryDecoder
from losh.models.losh_m.multimodal_transformer import LongShortEncoder
from losh.models.losh_m.segmentation import FPNSpatialDecoder, dynamic_mask_logits
from losh.models.shared.backbone import VideoSwinBackbone
from losh.models.shared.layers import MLP, TextProjection
from losh.models.shared.long_short import (
    fbc_outputs,
    frames_per_text,
    resize_padding,
    select_best_query,
    sentence_feature,
    short_texts_for_inference,
)
from losh.models.shared.position_encoding import sine_position_encoding_2d
from losh.models.shared.text_encoder import TextEncoder
from losh.schemas.config import ModelConfig


class LoShM(nn.Module):
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
                clip_index: Tensor | None = None, supervised: Sequence[int] | None = None,
                text_tokens: dict[str, Tensor] | None = None) -> dict:
        """frames (B, T, 3, H, W), one text per clip; or, with `clip_index` (N,), N texts of which text i
        refers to clip clip_index[i] (several expressions of a clip share one backbone pass). Outputs are
        per text; `fbc_features` (visual, text-independent) stay per clip. `annotated_index`: the window
        position L_fbc is anchored at; `supervised`: the positions with masks (default: the annotated one),
        all decoded also when the config decodes only annotated frames."""
        use_short = self.config.use_short_text and short_texts is not None
        return self._run(frames, long_texts, short_texts if use_short else None, annotated_index, padding_mask,
                         keep_fbc_features=True, clip_index=clip_index, supervised=supervised, text_tokens=text_tokens)

    @torch.no_grad()
    def infer(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None = None, *,
              annotated_index: int | None, padding_mask: Tensor | None = None, upsample: bool = True,
              clip_index: Tensor | None = None, text_tokens: dict[str, Tensor] | None = None) -> dict:
        """The long pathway's prediction (the short prediction head is off, paper 3.8). With
        `inference_short_pathway = "encoder"` the short texts still run through the multimodal encoder,
        as the keys/values of the long pathway's cross-attention; short_texts are ignored otherwise.
        `annotated_index` None: every frame of the window is decoded (whole-video inference), whatever
        the config's `decode_frames`."""
        short = short_texts_for_inference(self.config, short_texts)
        out = self._run(frames, long_texts, short, annotated_index, padding_mask, keep_fbc_features=False,
                        clip_index=clip_index, decode_short=False, text_tokens=text_tokens)
        long = out["long"]
        selected = select_best_query(long["pred_is_referred"].softmax(-1)[..., 0], long["pred_masks"])
        if upsample:   # (B, T', h, w) at stride 4 -> the input size
            selected["mask_logits"] = F.interpolate(selected["mask_logits"], size=frames.shape[-2:], mode="bilinear",
                                                    align_corners=False)
        return {**long, **selected, "frame_indices": out["frame_indices"], "annotated_index": annotated_index}

    # ---------------------------------------------------------------------------------- internals

    def _run(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None,
             annotated_index: int, padding_mask: Tensor | None, keep_fbc_features: bool,
             clip_index: Tensor | None = None, decode_short: bool = True,
             supervised: Sequence[int] | None = None, text_tokens: dict[str, Tensor] | None = None) -> dict:
        b = len(long_texts)
        visual = frames_per_text(self.backbone, frames, b, annotated_index, padding_mask, clip_index, supervised,
                                 self.config.transformer.decode_frames)
        clip_features, clip_padding, features = visual.clip_features, visual.clip_padding, visual.features
        padding_mask, frame_indices, selected = visual.padding, visual.frame_indices, visual.selected
        n_frames = len(frame_indices)
        paddings = [resize_padding(padding_mask, level.shape[-2:]) for level in features]

        # video tokens of the decoded frames, (B*T') ordered sample-major
        video = self.video_proj(selected[-1].contiguous())   # a contiguous gradient (DDP's buckets)
        h, w = video.shape[-2:]
        video_padding = paddings[-1].repeat_interleave(n_frames, dim=0)
        video_pos = sine_position_encoding_2d(video_padding, video.shape[1]).flatten(1, 2)
        video = video.flatten(2).transpose(1, 2)

        whole_video = annotated_index is None and not keep_fbc_features
        long_text, long_pad, short_text, short_pad = self.text_encoder(
            long_texts, short_texts, tokens=text_tokens,
            as_written=whole_video and self.config.text.as_written_in_videos)[:4]
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
            query_text = torch.cat([sentence_feature(s[0][:, h * w:], s[2][:, h * w:]) for _, s in pathways.values()])
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


def _layer_outputs(logits: Tensor, masks: Tensor, b: int, n_frames: int) -> dict:
    """(L, B*T', Q, ...) -> the last layer's dict with the earlier layers under "aux_outputs"."""
    layers = [{"pred_is_referred": lg.unflatten(0, (b, n_frames)), "pred_masks": mk.unflatten(0, (b, n_frames))}
              for lg, mk in zip(logits, masks)]
    return {**layers[-1], "aux_outputs": layers[:-1]}
