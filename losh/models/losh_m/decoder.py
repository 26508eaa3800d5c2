"""Transformer decoder (DETR/MTTR, post-norm): object queries attend to one pathway's encoder memory.

The same queries and weights serve both pathways; query i of frame t and query i of another frame
form the instance sequence i. Outputs of every layer (after the shared final LayerNorm) are returned
for the auxiliary losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.schemas.config import TransformerConfig


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, target: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_padding: Tensor) -> Tensor:
        q = k = target + query_pos
        target = self.norm1(target + self.dropout1(self.self_attention(q, k, target, need_weights=False)[0]))
        attended = self.cross_attention(target + query_pos, memory + memory_pos, memory,
                                        key_padding_mask=memory_padding, need_weights=False)[0]
        target = self.norm2(target + self.dropout2(attended))
        target = self.norm3(target + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(target))))))
        return target


class QueryDecoder(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.queries = nn.Embedding(config.num_queries, config.d_model)  # query position embeddings
        self.layers = nn.ModuleList(
            DecoderLayer(config.d_model, config.nheads, config.dim_feedforward, config.dropout)
            for _ in range(config.num_decoder_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, memory: Tensor, memory_pos: Tensor, memory_padding: Tensor,
                query_text: Tensor | None = None) -> Tensor:
        """memory (N, L, D) -> decoded queries of every layer (num_layers, N, Q, D).

        query_text (N, D), optional: a sentence feature that every query starts from (text-conditioned
        queries); by default the queries start from zeros, as DETR/MTTR."""
        n = memory.shape[0]
        # a copy, not an expand(): a no_grad view of a parameter trips torch's module tracker (flop counter)
        query_pos = self.queries.weight.unsqueeze(0).repeat(n, 1, 1)
        target = query_pos.new_zeros(query_pos.shape)
        if query_text is not None:
            target = target + query_text.unsqueeze(1)
        outputs = []
        for layer in self.layers:
            target = layer(target, query_pos, memory, memory_pos, memory_padding)
            outputs.append(self.norm(target))
        return torch.stack(outputs)
