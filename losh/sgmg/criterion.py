"""The training loss of LoSh-S and of the SgMg baseline: SgMg's matching and terms per pathway, plus LoSh's.

SgMg supervises the referred object only: per sample, one query (over the supervised frames) is matched to
it by the minimum of a cost; the other queries learn "not referred". The cost of query q, summed over the
pathways (long, and short with its own target, the short expression's possibly merged mask), with the
config's `match_*` weights (SgMg's: class 2, box L1 5, GIoU 2, mask focal 2, dice 5):

    class   SgMg's focal cost of q's "referred" probability, averaged over the frames where the object is
    box     L1 and -GIoU of q's boxes against the object's box, averaged over the same frames
    mask    the focal and -dice costs of q's stride-2 masks over the supervised frames (one sequence)

plus eq. 5's long-short term `match_lsi * L_lsi(long mask of q, short mask of q)` (`losh.matcher`).

Terms (unweighted; "_aux{i}" for the earlier decoder layers), per pathway `p`:
    loss_is_referred_p          sigmoid focal loss of every query's logit in every supervised frame (target 1
                                for the matched query where the object is visible), summed / num_boxes
    loss_box_l1_p, loss_giou_p  the matched query's boxes in the frames where the object is visible / num_boxes
    loss_focal_p, loss_dice_p   its masks at the input resolution over the supervised frames / num_boxes
    loss_focal_low_p, loss_dice_low_p   the same at stride 2 (the mask head's output before refinement)
and loss_lsi (eq. 1 on the matched query's long and short masks, batch mean) and loss_fbc (eq. 6), as LoSh-M.
num_boxes is SgMg's: the number of supervised frames where the object is visible (mean over processes, >= 1).
Boxes come from the masks (a mask-only data set): normalised (cx, cy, w, h) of the frame's valid area.
Unlike SgMg, frames without the object add no box term (SgMg regresses its query's box to zeros there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, normalised_cxcywh_from_masks
from losh.criterion import average_over_processes, fbc_term
from losh.losses import dice_coefficient, dice_loss, lsi_loss, sigmoid_focal_cost, sigmoid_focal_elements
from losh.matcher import long_short_cost
from schemas.config import LossConfig

PATHWAYS = ("long", "short")
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


@dataclass
class ReferredTarget:
    """One sample's referred object over its A supervised frames, at the model's input size (zero-padded)."""

    long_masks: Tensor      # (A, H, W) float
    short_masks: Tensor     # (A, H, W) the short expression's (possibly merged) masks
    visible: Tensor         # (A,) bool
    boxes: Tensor           # (A, 4) normalised cxcywh of the long masks (zeros where not visible)


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
        out.append(ReferredTarget(long, short, long.flatten(1).any(dim=1), normalised_cxcywh_from_masks(long, valid)))
    return out


def _low_resolution(masks: Tensor, size: tuple[int, int]) -> Tensor:
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


class SgmgCriterion(nn.Module):
    def __init__(self, config: LossConfig, use_short_text: bool = True) -> None:
        super().__init__()
        self.config = config
        self.use_short_text = use_short_text
        self.weights = {"is_referred": config.is_referred, "box_l1": config.box_l1, "giou": config.giou,
                        "focal": config.focal, "dice": config.dice, "focal_low": config.focal,
                        "dice_low": config.dice, "lsi": config.lsi, "fbc": config.fbc}

    def weight_of(self, key: str) -> float:
        """loss_dice_low_long_aux1 -> the dice weight."""
        base = key[len("loss_"):]
        for suffix in ("_long", "_short"):
            base = base.split(suffix)[0]
        return self.weights[base.split("_aux")[0]]

    def forward(self, outputs: dict, targets: list[dict], *, flows: Tensor | None = None,
                flow_valid: Tensor | None = None, flow_frame_size: tuple[int, int] | None = None
                ) -> dict[str, Tensor]:
        if self.use_short_text and "short" not in outputs:
            raise ValueError("this config trains the short pathway: call the model with short_texts")
        device = outputs["long"]["pred_logits"].device
        referred = referred_targets(targets, tuple(outputs["input_size"]), device)
        supervised = outputs.get("supervised") or [outputs["annotated_index"]]
        positions = [outputs["frame_indices"].index(p) for p in supervised]
        if any(t.long_masks.shape[0] != len(positions) for t in referred):
            raise ValueError(f"the targets hold masks of another number of frames than the {len(positions)} "
                             "supervised positions")
        pathways = [name for name in PATHWAYS if name in outputs]
        layers = [("", {p: _at_frames(outputs[p], positions) for p in pathways})]
        if self.config.aux_loss:
            layers += [(f"_aux{i}", {p: _at_frames(outputs[p]["aux_outputs"][i], positions) for p in pathways})
                       for i in range(len(outputs["long"]["aux_outputs"]))]
        num_boxes = average_over_processes(int(sum(int(t.visible.sum()) for t in referred)), device)
        losses: dict[str, Tensor] = {}
        if self.config.fbc > 0:
            losses["loss_fbc"] = fbc_term(outputs, self.config, flows, flow_valid, flow_frame_size)
        for suffix, layer in layers:
            matched = self.match(layer, referred)
            losses.update({k + suffix: v for k, v in self.layer_losses(layer, referred, matched, num_boxes).items()})
        losses["loss"] = sum(self.weight_of(k) * v for k, v in losses.items())
        return losses

    @torch.no_grad()
    def match(self, layer: dict[str, dict[str, Tensor]], targets: list[ReferredTarget]) -> Tensor:
        """The query matched to the referred object in each sample: (B,) indices."""
        c = self.config
        chosen = []
        for b, target in enumerate(targets):
            cost = 0
            low_probs = {}
            for name, out in layer.items():
                wanted = target.long_masks if name == "long" else target.short_masks
                low = out["pred_masks_low"][b]                                    # (A, Q, h, w)
                logits = low.transpose(0, 1).flatten(1)                           # (Q, A*h*w)
                wanted_low = _low_resolution(wanted, low.shape[-2:]).flatten()[None]
                low_probs[name] = logits.sigmoid()
                cost = cost + c.match_is_referred * _class_cost(out["pred_logits"][b], target.visible)
                cost = cost + c.match_focal * sigmoid_focal_cost(logits, wanted_low)[:, 0]
                cost = cost - c.match_dice * dice_coefficient(low_probs[name], wanted_low)[:, 0]
                if target.visible.any():
                    boxes = out["pred_boxes"][b][target.visible]                  # (A', Q, 4)
                    wanted_boxes = target.boxes[target.visible][:, None]          # (A', 1, 4)
                    cost = cost + c.match_box_l1 * (boxes - wanted_boxes).abs().sum(-1).mean(0)
                    giou = torch.stack([generalized_box_iou(box_cxcywh_to_xyxy(p), box_cxcywh_to_xyxy(w))[:, 0]
                                        for p, w in zip(boxes, wanted_boxes)])
                    cost = cost - c.match_giou * giou.mean(0)
            if "short" in low_probs and c.match_lsi > 0:
                cost = cost + long_short_cost(low_probs["long"], low_probs["short"], c.match_lsi,
                                              c.lsi_threshold, c.lsi_epsilon)
            if not torch.isfinite(cost).all():
                from losh.errors import NonFiniteOutputs
                raise NonFiniteOutputs(f"the matching cost of sample {b} holds NaN/inf: the model's predictions "
                                       "are not finite", {})
            chosen.append(int(cost.argmin()))
        return torch.tensor(chosen, device=targets[0].long_masks.device)

    def layer_losses(self, layer: dict[str, dict[str, Tensor]], targets: list[ReferredTarget], matched: Tensor,
                     num_boxes: float) -> dict[str, Tensor]:
        batch = torch.arange(len(targets), device=matched.device)
        visible = torch.stack([t.visible for t in targets])                      # (B, A)
        losses = {}
        for name, out in layer.items():
            logits = out["pred_logits"]                                           # (B, A, Q)
            is_referred = torch.zeros_like(logits)
            is_referred[batch, :, matched] = visible.to(logits.dtype)
            losses[f"loss_is_referred_{name}"] = sigmoid_focal_elements(logits, is_referred).sum() / num_boxes
            boxes = out["pred_boxes"][batch, :, matched][visible]                 # (visible frames, 4)
            wanted_boxes = torch.cat([t.boxes[t.visible] for t in targets])
            losses[f"loss_box_l1_{name}"] = F.l1_loss(boxes, wanted_boxes, reduction="sum") / num_boxes
            giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(wanted_boxes)))
            losses[f"loss_giou_{name}"] = (1 - giou).sum() / num_boxes
            wanted = torch.stack([t.long_masks if name == "long" else t.short_masks for t in targets])  # (B, A, H, W)
            masks = out["pred_masks"][batch, :, matched]                          # (B, A, H, W)
            low = out["pred_masks_low"][batch, :, matched]
            wanted_low = torch.stack([_low_resolution(w, low.shape[-2:]) for w in wanted])
            for suffix, predicted, target in (("", masks, wanted), ("_low", low, wanted_low)):
                predicted, target = predicted.flatten(1), target.flatten(1)
                losses[f"loss_focal{suffix}_{name}"] = (sigmoid_focal_elements(predicted, target).mean(-1).sum()
                                                        / num_boxes)
                losses[f"loss_dice{suffix}_{name}"] = dice_loss(predicted, target, num_boxes)
        if "short" in layer:
            long_probs = layer["long"]["pred_masks"][batch, :, matched].flatten(1).sigmoid()
            short_probs = layer["short"]["pred_masks"][batch, :, matched].flatten(1).sigmoid()
            losses["loss_lsi"] = lsi_loss(long_probs, short_probs, self.config.lsi_threshold,
                                          self.config.lsi_epsilon).mean()
        return losses


def _at_frames(out: dict[str, Tensor], positions: list[int]) -> dict[str, Tensor]:
    """The supervised frames' predictions (B, A, Q, ...) in float32 (losses in float32 under autocast)."""
    return {k: out[k][:, positions].float() for k in ("pred_logits", "pred_boxes", "pred_masks", "pred_masks_low")}
