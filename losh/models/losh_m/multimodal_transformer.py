"""Multimodal transformer encoder with the long and short pathways of LoSh (paper 3.4).

Each pathway's sequence is [video tokens of one frame; text tokens], as in MTTR (2D sine position
encoding on video tokens, zeros on text tokens). Layers are post-norm DETR layers.

- short pathway: self-attention (SA) in every layer;
- long pathway: SA in the odd-numbered layers (1, 3, ...), cross-attention (CA) in the even-numbered
  layers (2, 4, ...): long tokens are the queries, the short pathway's tokens at the same depth (the
  input of that layer) are keys and values.

The SA layers are shared by both pathways (one set of weights, as when MTTR's encoder is run on
both); each CA is its own layer (attention + feed-forward), replacing the SA of that layer.
`cross_attention` switches (paper table 2): "none" (SA everywhere), "long_from_short" (the paper's),
"short_from_long" (inverse: CA in the short pathway's even layers, long queries -> short queries),
"bidirectional" (both, with separate CA layers).

Without short features (inference with `inference_short_pathway` "none"; with "encoder", the default, the short
text derived from the long one runs through the encoder and feeds the CA), a long-pathway CA layer attends to the
long pathway's own tokens: its weights are used as a self-attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.models.shared.long_short import cross_attention_layers
from losh.schemas.config import TransformerConfig


class AttentionLayer(nn.Module):
    """Post-norm attention + feed-forward layer; keys/values come from `source` (default: itself)."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, padding: Tensor, source: Tensor | None = None,
                source_pos: Tensor | None = None, source_padding: Tensor | None = None) -> Tensor:
        if source is None:
            source, source_pos, source_padding = x, pos, padding
        attended = self.attention(x + pos, source + source_pos, source, key_padding_mask=source_padding,
                                  need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attended))
        x = self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x


class LongShortEncoder(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        args = (config.d_model, config.nheads, config.dim_feedforward, config.dropout)
        self.layers = nn.ModuleList(AttentionLayer(*args) for _ in range(config.num_encoder_layers))
        ca = cross_attention_layers(config.num_encoder_layers)
        mode = config.cross_attention
        long_reads_short = mode in ("long_from_short", "bidirectional")
        short_reads_long = mode in ("short_from_long", "bidirectional")
        self.long_cross = nn.ModuleDict({str(i): AttentionLayer(*args) for i in ca} if long_reads_short else {})
        self.short_cross = nn.ModuleDict({str(i): AttentionLayer(*args) for i in ca} if short_reads_long else {})

    def forward(self, long: Tensor, long_pos: Tensor, long_padding: Tensor, short: Tensor | None = None,
                short_pos: Tensor | None = None, short_padding: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """Sequences (N, L, D), position encodings (N, L, D), key padding masks (N, L) True on padding.

        Long and short sequences have the same length (their texts are padded together), so layers
        where both pathways run the same SA are computed in one batched call.
        """
        for index, layer in enumerate(self.layers):
            key = str(index)
            if short is None:
                cross = self.long_cross[key] if key in self.long_cross else layer
                long = cross(long, long_pos, long_padding)
                continue
            long_cross, short_cross = key in self.long_cross, key in self.short_cross
            if not long_cross and not short_cross:
                n = long.shape[0]
                both = layer(torch.cat((long, short)), torch.cat((long_pos, short_pos)),
                             torch.cat((long_padding, short_padding)))
                long, short = both[:n], both[n:]
                continue
            new_long = (self.long_cross[key](long, long_pos, long_padding, short, short_pos, short_padding)
                        if long_cross else layer(long, long_pos, long_padding))
            new_short = (self.short_cross[key](short, short_pos, short_padding, long, long_pos, long_padding)
                         if short_cross else layer(short, short_pos, short_padding))
            long, short = new_long, new_short
        return long, short
