"""Deformable transformer (Deformable DETR, single stage, as SgMg uses it), in pure PyTorch.

The encoder refines the multi-scale features with deformable self-attention (every pixel of every
level a query); the decoder's queries attend to each other, then sample the encoded features around
their reference points. With `decoder.bbox_embed` set (iterative box refinement, set by the model)
every decoder layer moves its queries' references, the first layer turning the initial 2-d points
into boxes. Post-norm layers, ReLU feed-forward, as Deformable DETR.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.models.losh_s.deformable_attention import MSDeformAttn, level_shapes, spatial_shapes_tensor
from losh.models.losh_s.dense_cross_attention import DenseCrossAttentionLayer
from losh.models.losh_s.post_norm import PostNormFeedForward
from losh.models.shared.long_short import cross_attention_layers


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped into [0, 1] and both terms kept >= eps (finite at 0 and 1)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def valid_ratios_of(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """mask (N, H, W) bool, True on the bottom/right padding -> (N, 2) (w, h) share of the map that is image."""
    _, height, width = mask.shape
    valid_height = (~mask[:, :, 0]).sum(1).to(dtype)
    valid_width = (~mask[:, 0, :]).sum(1).to(dtype)
    return torch.stack([valid_width / width, valid_height / height], -1)


def encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor) -> Tensor:
    """Every pixel's centre as the reference of its encoder query, seen from every level.

    spatial_shapes (L, 2) long (H_l, W_l); valid_ratios (N, L, 2) (w, h). Returns (N, S, L, 2) (x, y):
    the centre normalised by its own level's image part, then rescaled by each level's valid ratio
    (so a pixel maps onto the same image point on every level, whatever each level's padding).
    """
    references = []
    for level, (height, width) in enumerate(level_shapes(spatial_shapes)):
        ys = torch.arange(height, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5
        xs = torch.arange(width, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = grid_y.reshape(1, -1) / (valid_ratios[:, None, level, 1] * height)
        ref_x = grid_x.reshape(1, -1) / (valid_ratios[:, None, level, 0] * width)
        references.append(torch.stack((ref_x, ref_y), -1))  # (N, H*W, 2)
    return torch.cat(references, 1)[:, :, None] * valid_ratios[:, None]


def scale_by_valid_ratios(reference_points: Tensor, valid_ratios: Tensor) -> Tensor:
    """Image-normalised references (N, Q, 2) points or (N, Q, 4) boxes -> per-level (N, Q, L, 2 or 4).

    valid_ratios (N, L, 2) (w, h); a box's size scales as its centre does.
    """
    if reference_points.shape[-1] == 4:
        valid_ratios = torch.cat([valid_ratios, valid_ratios], -1)
    return reference_points[:, :, None] * valid_ratios[:, None]


class DeformableEncoderLayer(PostNormFeedForward):
    """Deformable self-attention over all levels, then a feed-forward block; post-norm."""

    def __init__(self, d_model: int = 256, dim_feedforward: int = 1024, dropout: float = 0.1, n_levels: int = 4,
                 n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.build_block(d_model, dim_feedforward, dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, padding_mask: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        """src, pos (N, S, d); reference_points (N, S, L, 2); padding_mask (N, S) bool -> (N, S, d).
        `source` (N, S, d), same grid: the values are sampled from it instead of `src` (LoSh's long-short
        cross-attention: long tokens query, the short pathway's tokens are sampled)."""
        values = src if source is None else source
        attended = self.self_attn(src + pos, reference_points, values, spatial_shapes, level_start_index, padding_mask)
        return self.finish(src, attended)


class LongShortDeformableEncoder(nn.Module):
    """LoSh's two-pathway encoder (paper 3.4) on deformable layers: the long and short pathways share the
    self-attention layers; with `cross_attention` "long_from_short" the even-numbered layers of the long pathway
    are cross-attention layers of their own, in one of two forms (`long_short_attention`):

    - "deformable": long tokens are the queries (they predict the sampling offsets and weights), the short
      pathway's tokens at the same depth are the sampled values. Both pathways hold the same visual grid (their
      SCF-fused features), so a long token samples the short map around its own position;
    - "dense" (`DenseCrossAttentionLayer`, the paper's wording): long tokens are the queries of standard
      multi-head attention whose keys and values are all the short pathway's tokens of the frame at that depth.

    "short_from_long" and "bidirectional" as in LoSh-M (the same form in the other direction); "none": SgMg's
    encoder run on each pathway. Without a short pathway (inference), a long CA layer attends to (samples) the
    long tokens."""

    def __init__(self, encoder_layer: DeformableEncoderLayer, num_layers: int, cross_attention: str = "none",
                 long_short_attention: str = "deformable") -> None:
        super().__init__()
        if long_short_attention not in ("deformable", "dense"):
            raise ValueError(f"long_short_attention must be 'deformable' or 'dense', got {long_short_attention!r}")
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        ca = cross_attention_layers(num_layers)
        long_reads_short = cross_attention in ("long_from_short", "bidirectional")
        short_reads_long = cross_attention in ("short_from_long", "bidirectional")

        def cross_layer() -> nn.Module:
            if long_short_attention == "dense":
                return DenseCrossAttentionLayer.like(encoder_layer)
            return copy.deepcopy(encoder_layer)

        self.long_cross = nn.ModuleDict({str(i): cross_layer() for i in ca} if long_reads_short else {})
        self.short_cross = nn.ModuleDict({str(i): cross_layer() for i in ca} if short_reads_long else {})

    def forward(self, long: Tensor, short: Tensor | None, spatial_shapes: Tensor, level_start_index: Tensor,
                valid_ratios: Tensor, pos: Tensor, padding_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """long, short (N, S, d) (short None: the long pathway alone); pos (N, S, d); valid_ratios (N, L, 2);
        padding_mask (N, S) -> the memories of both pathways."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        args = (spatial_shapes, level_start_index)
        for index, layer in enumerate(self.layers):
            key = str(index)
            if short is None:
                long = (self.long_cross[key] if key in self.long_cross else layer)(
                    long, pos, reference_points, *args, padding_mask)
                continue
            long_cross, short_cross = key in self.long_cross, key in self.short_cross
            if not long_cross and not short_cross:   # the shared layer on both pathways in one call
                n = long.shape[0]
                both = layer(torch.cat((long, short)), pos.repeat(2, 1, 1), reference_points.repeat(2, 1, 1, 1), *args,
                             None if padding_mask is None else padding_mask.repeat(2, 1))
                long, short = both[:n], both[n:]
                continue
            new_long = (self.long_cross[key](long, pos, reference_points, *args, padding_mask, source=short)
                        if long_cross else layer(long, pos, reference_points, *args, padding_mask))
            new_short = (self.short_cross[key](short, pos, reference_points, *args, padding_mask, source=long)
                         if short_cross else layer(short, pos, reference_points, *args, padding_mask))
            long, short = new_long, new_short
        return long, short


class DeformableDecoderLayer(nn.Module):
    """Self-attention among the queries, deformable cross-attention to the memory, feed-forward; post-norm."""

    def __init__(self, d_model: int = 256, dim_feedforward: int = 1024, dropout: float = 0.1, n_levels: int = 4,
                 n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, memory_padding_mask: Tensor | None = None) -> Tensor:
        """tgt, query_pos (N, Q, d); reference_points (N, Q, L, 2 or 4); memory (N, S, d) -> (N, Q, d)."""
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index,
                                   memory_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attended))
        feed_forward = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(feed_forward))


class DeformableDecoder(nn.Module):
    """A stack of deformable decoder layers, with optional iterative box refinement.

    `bbox_embed` (None, or a ModuleList of one head per layer mapping (.., d) -> (.., 4) deltas in
    inverse-sigmoid space) is set by the model after construction, as Deformable DETR's hack: the
    heads belong to the model (its box predictions) and the decoder borrows them to move the references.
    """

    def __init__(self, decoder_layer: DeformableDecoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.bbox_embed: nn.ModuleList | None = None

    def refined_references(self, layer_index: int, output: Tensor, reference_points: Tensor) -> Tensor:
        """The references after layer `layer_index`: (N, Q, 4) boxes from (N, Q, 2) points or (N, Q, 4) boxes.

        A point becomes a box: its centre moves by the delta's first two terms, its size is the
        sigmoid of the last two. Detached: each layer learns its own delta, as Deformable DETR.
        """
        assert self.bbox_embed is not None
        delta = self.bbox_embed[layer_index](output).to(reference_points.dtype)
        logits = inverse_sigmoid(reference_points)
        if reference_points.shape[-1] == 2:
            logits = F.pad(logits, (0, 2))  # the size starts from the delta alone
        return (delta + logits).sigmoid().detach()

    def forward(self, tgt: Tensor, reference_points: Tensor, memory: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, valid_ratios: Tensor, query_pos: Tensor,
                memory_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Every layer's output and references.

        tgt, query_pos (N, Q, d); reference_points (N, Q, 2) in [0, 1] of the image part; memory (N, S, d);
        valid_ratios (N, L, 2). Returns outputs (num_layers, N, Q, d) and the references after each
        layer (num_layers, N, Q, 2, or 4 with box refinement).
        """
        output = tgt
        outputs, references = [], []
        for layer_index, layer in enumerate(self.layers):
            per_level = scale_by_valid_ratios(reference_points, valid_ratios)
            output = layer(output, query_pos, per_level, memory, spatial_shapes, level_start_index,
                           memory_padding_mask)
            if self.bbox_embed is not None:
                reference_points = self.refined_references(layer_index, output, reference_points)
            outputs.append(output)
            references.append(reference_points)
        return torch.stack(outputs), torch.stack(references)


class DeformableTransformerOutput(NamedTuple):
    """With a short pathway, N is 2 x the clips' frames: the long pathway's first, then the short one's."""

    hs: Tensor                # (L_dec, N, Q, d) every decoder layer's queries
    init_reference: Tensor    # (N, Q, 2) the references the first decoder layer starts from
    inter_references: Tensor  # (L_dec, N, Q, 2 or 4) the references after each decoder layer
    memory: list[Tensor]      # the encoded features, one (N, d, H_l, W_l) map per level


class DeformableTransformer(nn.Module):
    """Deformable DETR's encoder-decoder, single stage, with learned query positions and given content queries;
    with a short pathway, LoSh's two-pathway encoder (its cross-attention "deformable" or "dense":
    `long_short_attention`) and one decoder (shared queries) for both pathways."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 4, num_decoder_layers: int = 4,
                 dim_feedforward: int = 2048, dropout: float = 0.1, num_feature_levels: int = 4,
                 dec_n_points: int = 4, enc_n_points: int = 4, cross_attention: str = "none",
                 long_short_attention: str = "deformable") -> None:
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        encoder_layer = DeformableEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                               enc_n_points)
        self.encoder = LongShortDeformableEncoder(encoder_layer, num_encoder_layers, cross_attention,
                                                  long_short_attention)
        decoder_layer = DeformableDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                               dec_n_points)
        self.decoder = DeformableDecoder(decoder_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)  # a query's initial (x, y) from its position embedding
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module._reset_parameters()  # the xavier pass above undid its offset/weight init
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor], query_embed: Tensor,
                tgt: Tensor, short_srcs: list[Tensor] | None = None, short_tgt: Tensor | None = None,
                decode_short: bool = True) -> DeformableTransformerOutput:
        """Encode the levels, decode the queries.

        srcs: one (N, d, H_l, W_l) map per level; masks: (N, H_l, W_l) bool, True on padding;
        pos_embeds: (N, d, H_l, W_l); query_embed: (Q, d) learned query positions; tgt: (N, Q, d)
        content queries (SgMg: the sentence feature repeated per query). `short_srcs`/`short_tgt`: the short
        pathway's levels and queries (same grids); both pathways are decoded unless `decode_short` is False
        (inference: the short pathway only feeds the long one's cross-attention).
        """
        if not len(srcs) == len(masks) == len(pos_embeds) == self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} levels of srcs, masks and pos_embeds, "
                             f"got {len(srcs)}, {len(masks)} and {len(pos_embeds)}")
        src_flatten, mask_flatten, pos_flatten = [], [], []
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            src_flatten.append(src.flatten(2).transpose(1, 2))  # (N, H*W, d)
            mask_flatten.append(mask.flatten(1))
            # the level embedding tells the levels apart where the sine positions coincide
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        mask_flatten = torch.cat(mask_flatten, 1)
        pos_flatten = torch.cat(pos_flatten, 1)
        short_flatten = (torch.cat([src.flatten(2).transpose(1, 2) for src in short_srcs], 1)
                         if short_srcs is not None else None)
        spatial_shapes = spatial_shapes_tensor([tuple(src.shape[-2:]) for src in srcs], src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        # references in full precision even under autocast (the attention casts them to its weights' dtype)
        dtype = self.level_embed.dtype
        valid_ratios = torch.stack([valid_ratios_of(mask, dtype) for mask in masks], 1)  # (N, L, 2)

        memory, short_memory = self.encoder(src_flatten, short_flatten, spatial_shapes, level_start_index,
                                            valid_ratios, pos_flatten, mask_flatten)
        if short_memory is not None and decode_short:   # both pathways through the decoder in one batched call
            if short_tgt is None:
                raise ValueError("the short pathway's levels were given without its content queries (short_tgt)")
            memory = torch.cat((memory, short_memory))
            tgt = torch.cat((tgt, short_tgt))
            valid_ratios = valid_ratios.repeat(2, 1, 1)
            mask_flatten = mask_flatten.repeat(2, 1)

        batch = memory.shape[0]
        # a copy, not an expand(): a no_grad view of a parameter trips torch's module tracker (flop counter)
        query_pos = query_embed.unsqueeze(0).repeat(batch, 1, 1)
        with torch.autocast(query_pos.device.type, enabled=False):
            init_reference = self.reference_points(query_pos.to(dtype)).sigmoid()  # (N, Q, 2)
        hs, inter_references = self.decoder(tgt, init_reference, memory, spatial_shapes, level_start_index,
                                            valid_ratios, query_pos, mask_flatten)

        sizes = [height * width for height, width in level_shapes(spatial_shapes)]
        memory_maps = [
            level_memory.transpose(1, 2).reshape(batch, self.d_model, height, width)
            for level_memory, (height, width) in zip(memory.split(sizes, dim=1), level_shapes(spatial_shapes))
        ]
        return DeformableTransformerOutput(hs, init_reference, inter_references, memory_maps)
