"""SgMg's matching of the referred object (LoSh-S), with LoSh's long-short term (eq. 5).

SgMg supervises the referred object only: per sample, one query (over the supervised frames) is matched to
it by the minimum of a cost; the other queries learn "not referred". The cost of query q, summed over the
pathways (long, and short with its own target, the short expression's possibly merged mask), with the
config's `match_*` weights (SgMg's: class 2, box L1 5, GIoU 2, mask focal 2, dice 5):

    class   SgMg's focal cost of q's "referred" probability, averaged over the frames where the target is
    box     L1 and -GIoU of q's boxes against the target's box, averaged over the same frames
    mask    the focal and -dice costs of q's stride-2 masks over the supervised frames (one sequence)

plus eq. 5's long-short term `match_lsi * L_lsi(long mask of q, short mask of q)` (`losh.matcher`).
The model matches inside its forward when given targets (as SgMg), so that only the matched query's masks are
refined to full resolution; the criterion reuses those matches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from losh.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, normalised_cxcywh_from_masks
from losh.errors import NonFiniteOutputs
from losh.losses import dice_coefficient, sigmoid_focal_cost
from losh.matcher import long_short_cost
from schemas.config import LossConfig

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


def referred_targets(targets: list[dict], input_size: tuple[int, int], device: torch.device) -> list[ReferredTarget]:
    """The referred object's targets from the trainer's target dicts (those of `losh.criterion.prepare_targets`:
    instance_masks, referred_index, optional long_mask/short_mask, and "valid_size" (h, w) for the boxes)."""
    out = []
    for index, target in enumerate(targets):
        instances = torch.as_tensor(target["instance_masks"], device=device).float()
        if instances.dim() == 3:
            instances = instances[None]
        if instances.dim() != 4:
            raise ValueError(f"target {index}: instance_masks must be (A, N, H, W) or (N, H, W), got "
                             f"{tuple(instances.shape)}")
        referred = int(target["referred_index"])
        if not 0 <= referred < instances.shape[1]:
            raise ValueError(f"target {index}: referred_index {referred} outside {instances.shape[1]} instances")
        frames, size = instances.shape[0], instances.shape[-2:]
        long = instances[:, referred]
        if target.get("long_mask") is not None:
            long = torch.as_tensor(target["long_mask"], device=device).float().reshape(frames, *size)
        short = long
        if target.get("short_mask") is not None:
            short = torch.as_tensor(target["short_mask"], device=device).float().reshape(frames, *size)
        if size[0] > input_size[0] or size[1] > input_size[1]:
            raise ValueError(f"target {index}: masks of {tuple(size)} larger than the model input {input_size}")
        pad = (0, input_size[1] - size[1], 0, input_size[0] - size[0])
        long, short = F.pad(long, pad), F.pad(short, pad)
        valid = tuple(int(v) for v in target["valid_size"]) if target.get("valid_size") is not None else tuple(size)
        out.append(ReferredTarget(long, short, long.flatten(1).any(dim=1), normalised_cxcywh_from_masks(long, valid),
                                  short.flatten(1).any(dim=1), normalised_cxcywh_from_masks(short, valid)))
    return out


def low_resolution(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Targets (A, H, W) at the stride-2 grid (SgMg: every second pixel, from the second). The grid starts at the
    input's top-left corner (the model crops it to (ceil(H/2), ceil(W/2))): odd sizes are zero-padded by one."""
    height, width = masks.shape[-2:]
    if (height + 1) // 2 != size[0] or (width + 1) // 2 != size[1]:
        raise ValueError(f"stride-2 masks of {tuple(size)} do not fit targets of {(height, width)}")
    return F.pad(masks, (0, width % 2, 0, height % 2))[..., 1::2, 1::2]


def _class_cost(logits: Tensor, visible: Tensor) -> Tensor:
    """SgMg's focal class cost of (A, Q) logits, averaged over the visible frames -> (Q,)."""
    if not visible.any():
        return logits.new_zeros(logits.shape[1])
    probs = logits[visible].sigmoid()
    negative = (1 - FOCAL_ALPHA) * probs ** FOCAL_GAMMA * -(1 - probs + 1e-8).log()
    positive = FOCAL_ALPHA * (1 - probs) ** FOCAL_GAMMA * -(probs + 1e-8).log()
    return (positive - negative).mean(0)


@torch.no_grad()
def match_referred(layer: dict[str, dict[str, Tensor]], targets: list[ReferredTarget], c: LossConfig) -> Tensor:
    """The query matched to the referred object in each sample: (B,) indices. `layer`: per pathway
    "pred_logits" (B, A, Q), "pred_boxes" (B, A, Q, 4), "pred_masks_low" (B, A, Q, h, w) of the supervised frames."""
    chosen = []
    for b, target in enumerate(targets):
        cost = 0
        low_probs = {}
        for name, out in layer.items():
            wanted, visible, wanted_boxes = target.of(name)
            low = out["pred_masks_low"][b]                                    # (A, Q, h, w)
            logits = low.transpose(0, 1).flatten(1)                           # (Q, A*h*w)
            wanted_low = low_resolution(wanted, low.shape[-2:]).flatten()[None]
            low_probs[name] = logits.sigmoid()
            cost = cost + c.match_is_referred * _class_cost(out["pred_logits"][b], visible)
            cost = cost + c.match_focal * sigmoid_focal_cost(logits, wanted_low)[:, 0]
            cost = cost - c.match_dice * dice_coefficient(low_probs[name], wanted_low)[:, 0]
            if visible.any():
                boxes = out["pred_boxes"][b][visible]                         # (A', Q, 4)
                seen = wanted_boxes[visible][:, None]                         # (A', 1, 4)
                cost = cost + c.match_box_l1 * (boxes - seen).abs().sum(-1).mean(0)
                giou = torch.stack([generalized_box_iou(box_cxcywh_to_xyxy(p), box_cxcywh_to_xyxy(w))[:, 0]
                                    for p, w in zip(boxes, seen)])
                cost = cost - c.match_giou * giou.mean(0)
        if "short" in low_probs and c.match_lsi > 0:
            cost = cost + long_short_cost(low_probs["long"], low_probs["short"], c.match_lsi,
                                          c.lsi_threshold, c.lsi_epsilon)
        if not torch.isfinite(cost).all():
            raise NonFiniteOutputs(f"the matching cost of sample {b} holds NaN/inf: the model's predictions "
                                   "are not finite", {})
        chosen.append(int(cost.argmin()))
    return torch.tensor(chosen, device=targets[0].long_masks.device)

