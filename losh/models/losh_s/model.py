"""LoSh-S: LoSh on SgMg (paper 4.2), and its SgMg baseline (`sgmg` preset: long text only).

The visual features of the decoded frames (Video Swin, strides 8, 16, 32, and a stride-2 convolution for 64,
each projected to D with GroupNorm) are fused with each pathway's words by SgMg's spectrum-guided fusion
(SCF); LoSh's two pathways then run through the deformable encoder (`LongShortDeformableEncoder`: the long
pathway's even-numbered layers sample the short pathway's tokens, or attend to all of them with
`sgmg.long_short_attention` "dense", paper 3.4) and one decoder with shared
queries (5 per frame, their content the pathway's sentence feature, their positions learned). Per decoder
layer and query: a referred-or-not logit, a box (iterative refinement), and SgMg's masks: a dynamic mask
head on the summed encoder memory at stride 8 gives a 4 x 4 sub-pixel patch per pixel (a stride-2 mask,
"low"), refined with the backbone's stride-8 and stride-4 features (MSO) to the input resolution.

Inputs as LoSh-M's (`LoShM`): frames (B, T, 3, H, W), texts, `annotated_index`, `padding_mask`, `clip_index`,
`supervised`. `forward` returns, per pathway ("long", and "short" with short texts),
    "pred_logits"      (B, T', Q) referred-or-not logits (sigmoid; SgMg's single class)
    "pred_boxes"       (B, T', Q, 4) normalised (cx, cy, w, h) of the frame's valid (unpadded) area
    "pred_masks"       (B, T', Q, H, W) mask logits at the input resolution (after MSO)
    "pred_masks_low"   (B, T', Q, H/2, W/2) the dynamic head's masks before refinement (odd sizes rounded up)
    "aux_outputs"      the same keys for each earlier decoder layer
and "frame_indices", "annotated_index", "supervised", "input_size", "fbc_features", "fbc_padding_mask" as LoSh-M.
Given the training targets (`targets=`, as the trainer passes them), each layer matches the referred object in
the forward, as SgMg does (`losh.models.losh_s.matcher`), and refines only the matched query
("pred_masks" (B, T', 1, H, W), "matched_query" (B,)): a fifth of the refinement; without targets every query is
refined.

`infer` decodes the long pathway's last layer (paper 3.8): "pred_logits", "pred_boxes", "pred_masks",
"frame_scores" (B, T', Q) probabilities, "scores" (B, Q) their mean over the decoded frames, "best_query",
"mask_logits" (B, T', H, W).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from losh.models.losh_s.deformable_transformer import DeformableTransformer, inverse_sigmoid
from losh.models.losh_s.mask_head import (
    DynamicMaskHead,
    MultiGranularityRefinement,
    mask_features_from_memory,
    to_fine_masks,
)
from losh.models.losh_s.matcher import match_referred, referred_targets
from losh.models.losh_s.spectral_fusion import SpectrumGuidedFusion, VisionLanguageFusion
from losh.models.shared.backbone import VideoSwinBackbone
from losh.models.shared.layers import MLP, TextProjection
from losh.models.shared.long_short import (
    fbc_outputs,
    frames_per_text,
    resize_padding,
    select_best_query,
    sentence_feature,
    short_texts_for_inference,
    take_positions,
)
from losh.models.shared.position_encoding import sine_position_encoding_1d, sine_position_encoding_2d
from losh.models.shared.text_encoder import TextEncoder
from losh.schemas.config import ModelConfig

CLASS_PRIOR = 0.01   # the class bias starts at this probability (focal loss, as Deformable DETR / SgMg)


class LoShS(nn.Module):
    # SgMg matches the referred object inside its forward (to refine only that query): the trainer passes targets
    matches_in_forward = True

    def __init__(self, config: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        tc, sc = config.transformer, config.sgmg
        d = tc.d_model
        self.backbone = VideoSwinBackbone(config.backbone, load_pretrained)
        self.text_encoder = TextEncoder(config.text, keep_pooler=sc.sentence_feature == "pooler")
        self.text_proj = TextProjection(self.text_encoder.hidden_size, d, tc.dropout)
        self.sentence_proj = TextProjection(self.text_encoder.hidden_size, d, tc.dropout)
        channels = self.backbone.out_channels           # strides 4, 8, 16, 32
        levels = sc.num_feature_levels
        # strides 8, 16, 32 by 1x1 convolutions; stride 64 (4 levels) by a stride-2 3x3 convolution of stride 32
        projections = [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(32, d)) for c in channels[1:]]
        if levels == 4:
            projections.append(nn.Sequential(nn.Conv2d(channels[-1], d, kernel_size=3, stride=2, padding=1),
                                             nn.GroupNorm(32, d)))
        self.input_proj = nn.ModuleList(projections)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.zeros_(projection[0].bias)
        fusion = VisionLanguageFusion(d, tc.nheads)      # one fusion module for all levels (SgMg)
        self.scf = nn.ModuleList(SpectrumGuidedFusion(d, fusion, sc.fft_sigma) for _ in range(levels))
        self.transformer = DeformableTransformer(
            d_model=d, nhead=tc.nheads, num_encoder_layers=tc.num_encoder_layers,
            num_decoder_layers=tc.num_decoder_layers, dim_feedforward=tc.dim_feedforward, dropout=tc.dropout,
            num_feature_levels=levels, dec_n_points=sc.dec_points, enc_n_points=sc.enc_points,
            cross_attention=tc.cross_attention, long_short_attention=sc.long_short_attention)
        self.query_embed = nn.Embedding(tc.num_queries, d)
        layers = tc.num_decoder_layers
        class_embed, bbox_embed = nn.Linear(d, 1), MLP(d, d, 4, 3)
        nn.init.constant_(class_embed.bias, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        if sc.box_refine:   # one head per layer; the decoder borrows the box heads to move its references
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(layers))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(layers))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:               # one head shared by the layers
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * layers)
            self.bbox_embed = nn.ModuleList([bbox_embed] * layers)
        self.mask_head = DynamicMaskHead(d, d, sc.controller_layers, sc.dynamic_channels, sc.relative_coords)
        self.mask_refine = MultiGranularityRefinement((channels[0], channels[1]), sc.dynamic_channels)

    # ------------------------------------------------------------------------------ public API

    def forward(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None = None,
                *, annotated_index: int, padding_mask: Tensor | None = None,
                clip_index: Tensor | None = None, supervised: Sequence[int] | None = None,
                targets: list[dict] | None = None, text_tokens: dict[str, Tensor] | None = None) -> dict:
        """As `LoShM.forward` (see the module docstring for the outputs). With `targets` (the trainer's,
        as the criterion takes them) each layer matches the referred object here, as SgMg does, and refines only
        the matched query: "pred_masks" (B, T', 1, H, W) and "matched_query" (B,) per pathway and layer."""
        use_short = self.config.use_short_text and short_texts is not None
        return self._run(frames, long_texts, short_texts if use_short else None, annotated_index, padding_mask,
                         training_outputs=True, clip_index=clip_index, supervised=supervised, targets=targets,
                         text_tokens=text_tokens)

    @torch.no_grad()
    def infer(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None = None, *,
              annotated_index: int | None, padding_mask: Tensor | None = None, upsample: bool = True,
              clip_index: Tensor | None = None, text_tokens: dict[str, Tensor] | None = None) -> dict:
        """The long pathway's last decoder layer (paper 3.8); the short texts feed the long pathway's
        cross-attention when the config says so (`inference_short_pathway`), as LoSh-M. `annotated_index` None:
        every frame is decoded. Masks are already at the input resolution (`upsample` has nothing to do)."""
        short = short_texts_for_inference(self.config, short_texts)
        out = self._run(frames, long_texts, short, annotated_index, padding_mask, training_outputs=False,
                        clip_index=clip_index, decode_short=False, text_tokens=text_tokens)
        long = out["long"]
        return {**long, **select_best_query(long["pred_logits"].sigmoid(), long["pred_masks"]),
                "frame_indices": out["frame_indices"], "annotated_index": annotated_index}

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---------------------------------------------------------------------------------- internals

    def _run(self, frames: Tensor, long_texts: Sequence[str], short_texts: Sequence[str] | None,
             annotated_index: int | None, padding_mask: Tensor | None, training_outputs: bool,
             clip_index: Tensor | None = None, decode_short: bool = True,
             supervised: Sequence[int] | None = None, targets: list[dict] | None = None,
             text_tokens: dict[str, Tensor] | None = None) -> dict:
        b = len(long_texts)
        sc = self.config.sgmg
        input_size = tuple(frames.shape[-2:])
        # SgMg pads its inputs to a multiple (32 in training and window evaluation, 16 in whole-video inference); the
        # training outputs stay at the padded size (its losses count the padding), inference crops back
        whole_video = annotated_index is None and not training_outputs
        frames, padding_mask = pad_to_multiple(frames, padding_mask,
                                               sc.pad_multiple_videos if whole_video else sc.pad_multiple)
        visual = frames_per_text(self.backbone, frames, b, annotated_index, padding_mask, clip_index, supervised,
                                 self.config.transformer.decode_frames)   # strides 4, 8, 16, 32
        clip_features, clip_padding = visual.clip_features, visual.clip_padding
        padding_mask, frame_indices, selected = visual.padding, visual.frame_indices, visual.selected
        n_frames = len(frame_indices)
        frame_padding = padding_mask.repeat_interleave(n_frames, dim=0)            # (B*T', H, W)

        texts = self.text_encoder(long_texts, short_texts, tokens=text_tokens,
                                  as_written=whole_video and self.config.text.as_written_in_videos)
        pathways = [(texts.long, texts.long_padding, texts.long_pooled)]
        if texts.short is not None:
            pathways.append((texts.short, texts.short_padding, texts.short_pooled))
        # both pathways' SCF in one batched call: the visual levels repeated, each copy fused with its own words
        copies = len(pathways)
        words = torch.cat([self.text_proj(w) for w, _, _ in pathways])               # (copies*B, S, D)
        word_padding = torch.cat([p for _, p, _ in pathways])
        # the sentence feature: RoBERTa's pooler output (SgMg), or the mean of the words' features
        sentences = torch.cat([self.sentence_proj(pooled if sc.sentence_feature == "pooler" else sentence_feature(w, p))
                               for w, p, pooled in pathways])
        word_pos = sine_position_encoding_1d(word_padding, words.shape[-1]).to(words.dtype)
        srcs, masks, poses = self._fused_levels(selected, frame_padding, words, word_padding, word_pos, n_frames,
                                                copies)
        per_copy = b * n_frames
        long_srcs = [s[:per_copy] for s in srcs]
        short_srcs = [s[per_copy:] for s in srcs] if copies == 2 else None
        tgt = sentences.repeat_interleave(n_frames, dim=0)[:, None].expand(-1, self.query_embed.num_embeddings, -1)
        decoded = self.transformer(long_srcs, masks, poses, self.query_embed.weight, tgt[:per_copy],
                                   short_srcs, tgt[per_copy:] if copies == 2 else None,
                                   decode_short=decode_short and training_outputs)
        decoded_copies = decoded.hs.shape[1] // per_copy

        valid_sizes = _valid_sizes(frame_padding).repeat(decoded_copies, 1)          # (copies*B*T', 2) (H, W)
        mask_features = mask_features_from_memory(decoded.memory[:3])               # strides 8-32 -> stride 8
        fine = [level.repeat(decoded_copies, 1, 1, 1) for level in selected[:2]]    # strides 4 and 8
        layers = range(decoded.hs.shape[0]) if training_outputs else [decoded.hs.shape[0] - 1]
        names = ["long", "short"][:decoded_copies]
        referred = (referred_targets(targets, tuple(frames.shape[-2:]), frames.device)
                    if targets is not None and training_outputs else None)
        positions = [frame_indices.index(p) for p in (supervised or [annotated_index])] if referred else []
        per_layer = []
        for layer in layers:
            heads, patches = self._heads(decoded, layer, mask_features, valid_sizes, frames.shape[-2:])
            matched = None
            if referred is not None:   # SgMg: match now, refine the matched query only
                view = {name: {k: take_positions(v[index * per_copy:(index + 1) * per_copy]
                                                 .unflatten(0, (b, n_frames)), positions)
                               for k, v in heads.items()} for index, name in enumerate(names)}
                matched = match_referred(view, referred, self.config.loss)                  # (B,)
                chosen = matched.repeat_interleave(n_frames).repeat(decoded_copies)         # (N,)
                patches = patches[torch.arange(len(chosen), device=chosen.device), chosen][:, None]
            heads["pred_masks"] = self._refine(patches, fine, frames.shape[-2:])
            per_layer.append((heads, matched))

        padded = tuple(frames.shape[-2:])
        out: dict = {"frame_indices": frame_indices, "annotated_index": annotated_index,
                     "supervised": list(supervised) if supervised else [annotated_index],
                     "input_size": padded if training_outputs else input_size}
        if not training_outputs and padded != input_size:   # inference: masks of the input, not of its padding
            height, width = input_size
            for heads, _ in per_layer:
                heads["pred_masks"] = heads["pred_masks"][..., :height, :width]
                heads["pred_masks_low"] = heads["pred_masks_low"][..., :(height + 1) // 2, :(width + 1) // 2]
        for index, name in enumerate(names):
            part = slice(index * per_copy, (index + 1) * per_copy)
            outputs = []
            for heads, matched in per_layer:
                outputs.append({k: v[part].unflatten(0, (b, n_frames)) for k, v in heads.items()})
                if matched is not None:
                    outputs[-1]["matched_query"] = matched
            out[name] = {**outputs[-1], "aux_outputs": outputs[:-1]}
        if training_outputs:
            out.update(fbc_outputs(clip_features, clip_padding, self.config.loss.fbc_level))
        return out

    def _fused_levels(self, selected: list[Tensor], frame_padding: Tensor, words: Tensor, word_padding: Tensor,
                      word_pos: Tensor, n_frames: int, copies: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """SCF at each level: the projected visual features of the decoded frames, fused with the words of each
        pathway (copies of the frames, pathway-major). Returns the levels (copies*B*T', D, h, w), and the padding
        masks and sine positions (B*T', ...) they share."""
        srcs, masks, poses = [], [], []
        previous_filter = None
        for level, projection in enumerate(self.input_proj):
            source = selected[level + 1] if level < 3 else selected[3]     # stride 64 comes from stride 32
            visual = projection(source)
            mask = resize_padding(frame_padding, visual.shape[-2:])
            fused, previous_filter = self.scf[level](visual.repeat(copies, 1, 1, 1), words, word_padding, word_pos,
                                                     n_frames, previous_filter)
            srcs.append(fused.to(visual.dtype))
            masks.append(mask)
            poses.append(sine_position_encoding_2d(mask, visual.shape[1], offset=self.config.sgmg.position_offset)
                         .permute(0, 3, 1, 2).to(visual.dtype))
        return srcs, masks, poses

    def _heads(self, decoded, layer: int, mask_features: Tensor, valid_sizes: Tensor, input_size: tuple[int, int]
               ) -> tuple[dict[str, Tensor], Tensor]:
        """One decoder layer's logits (N, Q), boxes (N, Q, 4) and stride-2 masks (N, Q, H/2, W/2) for the N decoded
        (pathway, text, frame)s, and the dynamic head's patches (N, Q, 16, h8, w8) that refinement takes."""
        hs = decoded.hs[layer]                                                     # (N, Q, D)
        reference = decoded.init_reference if layer == 0 else decoded.inter_references[layer - 1]
        logits = self.class_embed[layer](hs)[..., 0]
        delta = self.bbox_embed[layer](hs)
        reference_logits = inverse_sigmoid(reference)
        if reference.shape[-1] == 4:
            boxes = (delta + reference_logits).sigmoid()
        else:       # a 2-d reference point: it anchors the centre only
            boxes = torch.cat((delta[..., :2] + reference_logits, delta[..., 2:]), dim=-1).sigmoid()
        # the mask head is centred on the references after this layer (SgMg: inter_references[layer])
        centres = decoded.inter_references[layer][..., :2]
        patches = self.mask_head(hs[:, None], mask_features[:, None], centres[:, None], valid_sizes)[:, 0]
        # the backbone pads the input bottom/right to its strides, so the grids start at the input's top-left
        # corner and overhang it: crop (inputs not divisible by 8 or 4), never resize (it would shift the masks)
        height, width = input_size
        low = to_fine_masks(patches)[..., :(height + 1) // 2, :(width + 1) // 2]  # (N, Q, H/2, W/2)
        return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks_low": low}, patches

    def _refine(self, patches: Tensor, fine: list[Tensor], input_size: tuple[int, int]) -> Tensor:
        """MSO: patches (N, Q', 16, h8, w8) with the frames' stride-4 and stride-8 features -> (N, Q', H, W)."""
        n, q = patches.shape[:2]
        refined = self.mask_refine(patches.flatten(0, 1), fine[0].repeat_interleave(q, dim=0),
                                   fine[1].repeat_interleave(q, dim=0))
        height, width = input_size
        return to_fine_masks(refined).unflatten(0, (n, q))[..., :height, :width]


def pad_to_multiple(frames: Tensor, padding_mask: Tensor | None, multiple: int) -> tuple[Tensor, Tensor | None]:
    """Frames (B, T, 3, H, W) zero-padded bottom/right to multiples of `multiple`, and their padding mask (True on
    padding, the new rows and columns included); unchanged when they are multiples already."""
    height, width = frames.shape[-2:]
    extra_h, extra_w = -height % multiple, -width % multiple
    if not (extra_h or extra_w):
        return frames, padding_mask
    if padding_mask is None:
        padding_mask = torch.zeros((frames.shape[0], height, width), dtype=torch.bool, device=frames.device)
    return (torch.nn.functional.pad(frames, (0, extra_w, 0, extra_h)),
            torch.nn.functional.pad(padding_mask, (0, extra_w, 0, extra_h), value=True))


def _valid_sizes(padding: Tensor) -> Tensor:
    """(N, H, W) padding masks (bottom/right padding) -> (N, 2) the valid (H, W) of each frame."""
    content = ~padding
    return torch.stack((content.any(dim=2).sum(dim=1), content.any(dim=1).sum(dim=1)), dim=1).to(torch.float32)
