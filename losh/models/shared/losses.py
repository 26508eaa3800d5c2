"""LoSh's loss terms as plain functions on tensors (MTTR's dice, focal and "is referred"; the paper's
L_lsi (eq. 1) and L_fbc (eq. 6)).

Masks are compared at the ground truth's resolution: predicted logits (stride 4) are upsampled
bilinearly to the target size first (MTTR's choice), by the caller.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losh.models.shared.warp import resize_flow, warp_by_flow

FLOW_OFFSETS = (-2, -1, 1, 2)   # the flows' order: frame k to k-2, k-1, k+1, k+2
FBC_REDUCTIONS = ("pixel_mean", "mean", "sum")


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sum over masks of 1 - (2 |p t| + 1) / (|p| + |t| + 1), divided by num_masks. Shapes (M, P)."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_focal_elements(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """RetinaNet's focal loss of each element (same shapes): alpha-weighted (1 - p_t)^gamma * cross-entropy."""
    probs = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """RetinaNet focal loss, mean over pixels, sum over masks / num_masks. Shapes (M, P)."""
    return sigmoid_focal_elements(logits, targets, alpha, gamma).mean(-1).sum() / num_masks


def sigmoid_focal_cost(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Pairwise mean focal loss of mask logits (..., Q, P) against binary targets (..., N, P) -> (..., Q, N) (SgMg's
    matching cost of masks), computed without a (Q, N, P) tensor: the focal term is linear in the target."""
    positive = sigmoid_focal_elements(logits, torch.ones_like(logits), alpha, gamma)
    negative = sigmoid_focal_elements(logits, torch.zeros_like(logits), alpha, gamma)
    return (positive @ targets.transpose(-1, -2) + negative @ (1 - targets).transpose(-1, -2)) / logits.shape[-1]


def dice_coefficient(probs: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Pairwise dice of probabilities (..., Q, P) and binary targets (..., N, P) -> (..., Q, N) (matching cost)."""
    numerator = 2 * probs @ targets.transpose(-1, -2)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return (numerator + smooth) / (denominator + smooth)


def is_referred_loss(logits: Tensor, referred_query: Tensor, eos_coef: float, visible: Tensor | None = None,
                     normaliser: float | None = None) -> Tensor:
    """MTTR's 2-way "is referred" loss.

    logits (F, Q, 2) for F (sample, frame) pairs, class 0 = referred; referred_query (F,) the query
    matched to the referred instance; visible (F,) bool, default all: whether the referred instance
    is visible in that frame (MTTR's is_ref_inst_visible: where it is not, its query too should say
    "not referred"). Cross-entropy against "referred" for that query where visible and "not referred"
    otherwise, the queries other than the referred one weighted by eos_coef; summed and divided by
    `normaliser` (MTTR: the number of samples; default F).
    """
    log_probs = logits.log_softmax(-1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    # the values assigned are device tensors: a Python number would be copied to the GPU, waiting for it
    target = torch.ones(logits.shape[:2], dtype=torch.long, device=logits.device)
    target[rows, referred_query] = target.new_zeros(()) if visible is None else (~visible.bool()).long()
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    weights = torch.full_like(nll, eos_coef)
    weights[rows, referred_query] = weights.new_ones(())
    return (nll * weights).sum() / (normaliser if normaliser is not None else logits.shape[0])


def lsi_loss(long_probs: Tensor, short_probs: Tensor, threshold: float = 0.5, epsilon: float = 1.0,
             frames: int = 1) -> Tensor:
    """Equation 1 per mask: 1 - (|m_l . m_s| + eps) / (|m_l| + eps), probabilities below `threshold`
    set to 0 first. Shapes (..., P) -> (...). With `frames` A > 1, P holds A frames one after the other: the
    term of each frame, averaged over the frames (eq. 1 sums them; the mean keeps the scale of one frame, as
    MTTR's per-frame terms are divided by the number of frame masks)."""
    if frames > 1:
        long_probs, short_probs = (by_frame(p, frames) for p in (long_probs, short_probs))
    long_fg = long_probs * (long_probs >= threshold)
    short_fg = short_probs * (short_probs >= threshold)
    per_mask = 1 - ((long_fg * short_fg).sum(-1) + epsilon) / (long_fg.sum(-1) + epsilon)
    return per_mask.mean(-1) if frames > 1 else per_mask


def by_frame(masks: Tensor, frames: int) -> Tensor:
    """(..., A*P) masks of A frames one after the other -> (..., A, P)."""
    return masks.unflatten(-1, (frames, masks.shape[-1] // frames))


def frame_mean_dice(probs: Tensor, targets: Tensor, frames: int) -> Tensor:
    """MTTR's matching dice of masks over A frames: (Q, A*P) probabilities and (N, A*P) targets -> (Q, N), the
    pairwise dice of each frame averaged over the frames (A = 1: `dice_coefficient`)."""
    if frames == 1:
        return dice_coefficient(probs, targets)
    return dice_coefficient(by_frame(probs, frames).transpose(0, 1), by_frame(targets, frames).transpose(0, 1)).mean(0)


def fbc_loss(features: Tensor, flows: Tensor, flow_valid: Tensor, annotated_index: int,
             variant: str = "standard", frame_size: tuple[int, int] | None = None,
             padding_mask: Tensor | None = None, offsets: Sequence[int] = FLOW_OFFSETS,
             reduction: str = "pixel_mean") -> Tensor:
    """Forward-backward visual consistency (equation 6).

    features (B, T, C, h, w): per-frame visual features of the window; the annotated frame k is at
    `annotated_index`, frame k+t at annotated_index + t. flows (B, len(offsets), 2, hf, wf): flow
    from frame k to frame k+t (OpenCV convention, see losh.models.shared.warp), vectors in pixels of `frame_size`
    (default: the flow's own grid); resized to the feature map and scaled. flow_valid (B, K) bool:
    False where k+t lies outside the video (that term is 0).

    variant "standard": f_k+t warped onto frame k vs f_k; "opposite": f_k warped onto frame k+t
    (the flow k+t -> k approximated by the negated flow k -> k+t, read at the target pixel) vs f_k+t;
    "mutual": the sum of both.

    Each term is eq. 6's squared distance over the valid pixels, reduced by `reduction`:
    "pixel_mean" (default) the squared L2 distance of the two feature vectors (summed over channels),
    averaged over the valid pixels; "mean" averaged over the channels too; "sum" summed over pixels
    and channels. Terms are summed over the offsets and averaged over the batch.
    """
    if variant not in ("standard", "opposite", "mutual"):
        raise ValueError(f"unknown L_fbc variant {variant!r}")
    if reduction not in FBC_REDUCTIONS:
        raise ValueError(f"unknown L_fbc reduction {reduction!r}; one of {FBC_REDUCTIONS}")
    features = features.float()  # pixel coordinates need float32 even under autocast
    b, t, c, h, w = features.shape
    if flows.shape[:3] != (b, len(offsets), 2):
        raise ValueError(f"flows must be (B={b}, {len(offsets)}, 2, h, w), got {tuple(flows.shape)}")
    content = None if padding_mask is None else (~padding_mask).unsqueeze(1)  # (B, 1, h, w)
    anchor = features[:, annotated_index]
    total = features.new_zeros(b)
    for index, offset in enumerate(offsets):
        position = annotated_index + offset
        usable = flow_valid[:, index].to(features.dtype)   # a term outside the video counts 0 (no read-back)
        if not 0 <= position < t:
            continue
        neighbour = features[:, position]
        flow = resize_flow(flows[:, index].float(), (h, w), frame_size)
        terms = []
        if variant in ("standard", "mutual"):
            terms.append((neighbour, anchor, flow))
        if variant in ("opposite", "mutual"):
            terms.append((anchor, neighbour, -flow))
        for source, target, displacement in terms:
            warped, valid = warp_by_flow(source, displacement, content)
            if content is not None:
                valid = valid & content
            valid = valid.to(features.dtype)
            squared = ((warped - target) ** 2 * valid).sum(dim=(1, 2, 3))
            if reduction == "sum":
                total = total + usable * squared
            else:
                per = valid.sum(dim=(1, 2, 3)) * (c if reduction == "mean" else 1)
                total = total + usable * squared / per.clamp(min=1)
    return total.mean()
