"""The residual, post-norm and feed-forward block every LoSh-S encoder layer ends with (Deformable DETR's): one
definition for the deformable self/cross-attention layer and the dense cross-attention layer, whose weight names
(`norm1`, `linear1`, `linear2`, `norm2`) published SgMg files use."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PostNormFeedForward(nn.Module):
    """A subclass builds its attention, then the block's layers (`build_block`: after the attention, so that
    seeded initialisations draw in the same order as before), and ends its forward with `finish`."""

    def build_block(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def finish(self, src: Tensor, attended: Tensor) -> Tensor:
        """norm(src + attended), then norm(x + feed_forward(x)) -> (N, S, d)."""
        src = self.norm1(src + self.dropout1(attended))
        feed_forward = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(feed_forward))
