"""LoSh's long-short cross-attention in the paper's form (3.4), for LoSh-S's deformable encoder.

The paper's CA "treats F_s as key and value while F_l as query": every long token attends, by standard multi-head
attention, to all the short pathway's tokens of its frame at the same depth, over all feature levels (padded
pixels masked out as keys). The deformable form beside it (`DeformableEncoderLayer` with a `source`) lets the long
query predict where to sample the short map near its own position, so the short tokens are values only; this
layer gives the short tokens their key role back. `sgmg.long_short_attention` chooses between the two.

The attention runs through `scaled_dot_product_attention`, whose fused kernels (memory-efficient on GPU) never
hold the S x S weights of a frame (4,820 tokens at 360 x 640); the residual, post-norm and feed-forward block is
`DeformableEncoderLayer`'s.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from losh.models.losh_s.post_norm import PostNormFeedForward


class DenseCrossAttentionLayer(PostNormFeedForward):
    """Multi-head attention from the layer's tokens (queries) to a source's tokens of the same frame (keys and
    values, every level), then a feed-forward block; post-norm, as `DeformableEncoderLayer`."""

    def __init__(self, d_model: int = 256, n_heads: int = 8, dim_feedforward: int = 1024,
                 dropout: float = 0.1) -> None:
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        super().__init__()
        self.n_heads = n_heads
        self.query_proj = nn.Linear(d_model, d_model)
        self.key_proj = nn.Linear(d_model, d_model)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.build_block(d_model, dim_feedforward, dropout)
        for projection in (self.query_proj, self.key_proj, self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)   # as nn.MultiheadAttention starts
            nn.init.zeros_(projection.bias)

    @classmethod
    def like(cls, layer: nn.Module) -> DenseCrossAttentionLayer:
        """A dense layer with the widths, heads and dropout of the encoder's deformable layers."""
        attention = layer.self_attn
        return cls(attention.d_model, attention.n_heads, layer.linear1.out_features, layer.dropout1.p)

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """queries (N, S_q, d), keys and values (N, S_k, d), padding_mask (N, S_k) True on keys to ignore ->
        (N, S_q, d): the projected multi-head attention (no dropout on the weights, as the deformable form)."""
        n, length, d_model = queries.shape

        def heads(x: Tensor) -> Tensor:   # (N, S, d) -> (N, heads, S, d / heads)
            return x.unflatten(-1, (self.n_heads, d_model // self.n_heads)).transpose(1, 2)

        allowed = None if padding_mask is None else ~padding_mask[:, None, None, :]   # (N, 1, 1, S_k)
        attended = F.scaled_dot_product_attention(heads(self.query_proj(queries)), heads(self.key_proj(keys)),
                                                  heads(self.value_proj(values)), attn_mask=allowed)
        return self.output_proj(attended.transpose(1, 2).reshape(n, length, d_model))

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor | None = None,
                spatial_shapes: Tensor | None = None, level_start_index: Tensor | None = None,
                padding_mask: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        """src, pos (N, S, d): a frame's tokens of all levels and their positions; `source` (N, S, d), the same
        grid: keys (with `pos`) and values (None: `src` itself); padding_mask (N, S) True on padded pixels, which
        no query attends to -> (N, S, d). Called as `DeformableEncoderLayer` is: the reference points and level
        shapes, which dense attention does not need, are accepted and unused."""
        source = src if source is None else source
        return self.finish(src, self.attend(src + pos, source + pos, source, padding_mask))
