"""SgMg's matching of the referred object (LoSh-S), with LoSh's long-short term (eq. 5).

SgMg supervises the referred object only: per sample, one query (over the supervised frames) is matched to
it by the minimum of a cost; the other queries learn "not referred". The cost of query q, summed over the
pathways (long, and short with its own target, the short expression's possibly merged mask), with the
config's `match_*` weights (SgMg's: class 2, box L1 5, GIoU 2, mask focal 2, dice 5):

    class   SgMg's focal cost of q's "referred" probability, averaged over the frames where the target is
    box     L1 and -GIoU of q's boxes against the target's box, averaged over the same frames
    mask    the focal and -dice costs of q's stride-2 masks over the supervised frames (one sequence)

plus eq. 5's long-short term `match_lsi * L_lsi(long mask of q, short mask of q)` (`losh.models.shared.matching`),
per frame and averaged over the frames (`loss.frame_terms`; SgMg's own mask terms are over the sequence).
The model matches inside its forward when given targets (as SgMg), so that only the matched query's masks are
refined to full resolution; the criterion reuses those matches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from losh.models.shared.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou, normalised_cxcywh_from_masks
from losh.models.shared.criterion import ReferredMasks, parse_targets
from losh.models.shared.losses import dice_coefficient, sigmoid_focal_cost
from losh.models.shared.matching import long_short_cost
from losh.schemas.config import LossConfig

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


@dataclass
class ReferredTarget:
    """One sample's referred object over its A supervised frames, at the model's input size (zero-padded): the
    long pathway's target and the short pathway's (the short expression's, possibly merged, mask)."""

    long_masks: Tensor      # (A, H, W) float
    short_masks: Tensor     # (A, H, W)
    visible: Tensor         # (A,) bool: the long target is in the frame
    boxes: Tensor           # (A, 4) normalised cxcywh of the long masks (zeros where not visible)
    short_visible: Tensor   # (A,) bool
    short_boxes: Tensor     # (A, 4) of the short masks

    def of(self, pathway: str) -> tuple[Tensor, Tensor, Tensor]:
        """(masks, visible, boxes) of a pathway's target."""
        if pathway == "long":
            return self.long_masks, self.visible, self.boxes
        return self.short_masks, self.short_visible, self.short_boxes


def referred_target(target: ReferredMasks) -> ReferredTarget:
    """A sample's referred object as SgMg's matcher and loss take it: the long and short masks, where each is
    visible, and their boxes (normalised by the frame's valid size)."""
    long, short, valid = target.long, target.short, target.valid_size
    return ReferredTarget(long, short, long.flatten(1).any(dim=1), normalised_cxcywh_from_masks(long, valid),
                          short.flatten(1).any(dim=1), normalised_cxcywh_from_masks(short, valid))


def referred_targets(targets: list[dict], input_size: tuple[int, int], device: torch.device) -> list[ReferredTarget]:
    """`referred_target` of each of the trainer's target dicts (`losh.models.shared.criterion.parse_targets`)."""
    return [referred_target(t) for t in parse_targets(targets, input_size, device)]


def low_resolution(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Targets (A, H, W) at the stride-2 grid (SgMg: every second pixel, from the second). The grid starts at the
    input's top-left corner (the model crops it to (ceil(H/2), ceil(W/2))): odd sizes are zero-padded by one."""
    height, width = masks.shape[-2:]
    if (height + 1) // 2 != size[0] or (width + 1) // 2 != size[1]:
        raise ValueError(f"stride-2 masks of {tuple(size)} do not fit targets of {(height, width)}")
    return F.pad(masks, (0, width % 2, 0, height % 2))[..., 1::2, 1::2]


def _class_cost(logits: Tensor, visible: Tensor) -> Tensor:
    """SgMg's focal class cost of (B, A, Q) logits, averaged over each sample's visible frames (B, A) -> (B, Q);
    0 for a sample without one."""
    probs = logits.sigmoid()
    negative = (1 - FOCAL_ALPHA) * probs ** FOCAL_GAMMA * -(1 - probs + 1e-8).log()
    positive = FOCAL_ALPHA * (1 - probs) ** FOCAL_GAMMA * -(probs + 1e-8).log()
    return _visible_mean(positive - negative, visible)


def _visible_mean(per_frame: Tensor, visible: Tensor) -> Tensor:
    """(B, A, Q) values, (B, A) bool -> (B, Q) their mean over the visible frames (0 where none is)."""
    weights = visible.to(per_frame.dtype)[..., None]
    return (per_frame * weights).sum(1) / weights.sum(1).clamp(min=1)


@torch.no_grad()
def match_referred(layer: dict[str, dict[str, Tensor]], targets: list[ReferredTarget], c: LossConfig) -> Tensor:
    """The query matched to the referred object in each sample: (B,) indices, left on the device (nothing is read
    back). `layer`: per pathway "pred_logits" (B, A, Q), "pred_boxes" (B, A, Q, 4), "pred_masks_low"
    (B, A, Q, h, w) of the supervised frames. In float32 whatever the autocast around it (a bf16 dice numerator
    steps by 1/128 of itself, which can change the match). Non-finite predictions give a non-finite loss, which
    the trainer reports."""
    with torch.autocast(targets[0].long_masks.device.type, enabled=False):
        cost = 0
        low_probs = {}
        for name, out in layer.items():
            wanted, visible, wanted_boxes = (torch.stack(parts) for parts in zip(*(t.of(name) for t in targets)))
            low = out["pred_masks_low"].float()                                # (B, A, Q, h, w)
            logits = low.transpose(1, 2).flatten(2)                            # (B, Q, A*h*w)
            wanted_low = low_resolution(wanted, low.shape[-2:]).flatten(1)[:, None]   # (B, 1, A*h*w)
            low_probs[name] = logits.sigmoid()
            cost = cost + c.match_is_referred * _class_cost(out["pred_logits"].float(), visible)
            cost = cost + c.match_focal * sigmoid_focal_cost(logits, wanted_low)[..., 0]
            cost = cost - c.match_dice * dice_coefficient(low_probs[name], wanted_low)[..., 0]
            boxes = out["pred_boxes"].float()                                  # (B, A, Q, 4)
            seen = wanted_boxes[:, :, None]                                    # (B, A, 1, 4)
            # SgMg averages the box costs over every frame, an absent object's box being all zeros
            box_frames = torch.ones_like(visible) if c.boxes_in_absent_frames else visible
            cost = cost + c.match_box_l1 * _visible_mean((boxes - seen).abs().sum(-1), box_frames)
            giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(seen))
            cost = cost - c.match_giou * _visible_mean(giou, box_frames)
        if "short" in low_probs and c.match_lsi > 0:
            frames = layer["long"]["pred_masks_low"].shape[1] if c.frame_terms == "per_frame" else 1
            cost = cost + long_short_cost(low_probs["long"], low_probs["short"], c.match_lsi,
                                          c.lsi_threshold, c.lsi_epsilon, frames)
        return cost.argmin(dim=1)
