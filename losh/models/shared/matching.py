"""Eq. 5: the long-short term every base model adds to its matching cost.

The query matched to the referred object should also be the one whose long- and short-text masks agree: its
L_lsi (eq. 1) joins the base model's matching cost (MTTR's Hungarian cost in LoSh-M, SgMg's referred-object
cost in LoSh-S).
"""
from __future__ import annotations

from torch import Tensor

from losh.models.shared.losses import lsi_loss


def long_short_cost(long_probs: Tensor, short_probs: Tensor, weight: float, threshold: float = 0.5,
                    epsilon: float = 1.0, frames: int = 1) -> Tensor:
    """weight * L_lsi(long mask, short mask) of each query's predictions for the referred object: (Q, P)
    probabilities -> (Q,); with `frames` > 1 per frame, averaged over the frames (eq. 5 sums every term over the
    frames: averaging all of them keeps the argmin)."""
    return weight * lsi_loss(long_probs, short_probs, threshold, epsilon, frames)
