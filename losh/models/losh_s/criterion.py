"""The training loss of LoSh-S and of the SgMg baseline: SgMg's matching and terms per pathway, plus LoSh's.

Matching (`losh.models.losh_s.matcher`): per sample the referred object gets one query, by SgMg's cost summed over
the pathways plus eq. 5's long-short term; the model matches in its forward when given targets (SgMg's way:
only the matched query is refined to full resolution; its "pred_masks" then hold that query alone, with
"matched_query" (B,)), otherwise the criterion matches here.

Terms (unweighted; "_aux{i}" for the earlier decoder layers), per pathway `p`:
    loss_is_referred_p          sigmoid focal loss of every query's logit in every supervised frame (target 1
                                for the matched query where the pathway's target is visible), summed / num_boxes
    loss_box_l1_p, loss_giou_p  the matched query's boxes in the frames where the target is visible / num_boxes
                                (the short pathway's target: the short expression's possibly merged mask and box)
    loss_focal_p, loss_dice_p   its masks at the input resolution over the supervised frames / num_boxes
    loss_focal_low_p, loss_dice_low_p   the same at stride 2 (the mask head's output before refinement)
and loss_lsi (eq. 1 on the matched query's long and short masks, per frame, batch mean) and loss_fbc (eq. 6), as
LoSh-M.
num_boxes is SgMg's: the number of supervised frames where the object is visible (mean over processes, >= 1).
Boxes come from the masks (a mask-only data set): normalised (cx, cy, w, h) of the frame's valid area.
Frames without the object: with `loss.boxes_in_absent_frames` (SgMg, the `losh-s` and `sgmg` presets) their box
is regressed to zeros and counts in the box matching cost, as SgMg does; off, they add no box term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losh.models.losh_s.matcher import ReferredTarget, low_resolution, match_referred, referred_target
from losh.models.shared.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from losh.models.shared.criterion import LongShortCriterion, ReferredMasks, average_over_processes
from losh.models.shared.long_short import take_positions
from losh.models.shared.losses import dice_loss, sigmoid_focal_elements, sigmoid_focal_loss
from losh.schemas.config import LossConfig


class LoShSCriterion(LongShortCriterion):
    def __init__(self, config: LossConfig, use_short_text: bool = True) -> None:
        super().__init__(config, use_short_text,
                         {"is_referred": config.is_referred, "box_l1": config.box_l1, "giou": config.giou,
                          "focal": config.focal, "dice": config.dice, "focal_low": config.focal,
                          "dice_low": config.dice})

    def model_targets(self, parsed: list[ReferredMasks], outputs: dict) -> list[ReferredTarget]:
        return [referred_target(t) for t in parsed]

    def normaliser(self, targets: list[ReferredTarget]) -> float:
        """SgMg's num_boxes: the supervised frames where the referred object is visible (all processes' mean)."""
        return average_over_processes(sum(t.visible.sum() for t in targets), targets[0].long_masks.device)

    def at_frames(self, out: dict[str, Tensor], positions: list[int]) -> dict[str, Tensor]:
        """The supervised frames' predictions (B, A, Q, ...) in float32 (losses in float32 under autocast), and
        the model's matches when it made them."""
        taken = {k: take_positions(out[k], positions).float()
                 for k in ("pred_logits", "pred_boxes", "pred_masks", "pred_masks_low")}
        if out.get("matched_query") is not None:
            taken["matched_query"] = out["matched_query"]
        return taken

    def match(self, layer: dict[str, dict[str, Tensor]], targets: list[ReferredTarget]) -> Tensor:
        matched = layer["long"].get("matched_query")     # matched by the model in its forward
        return matched if matched is not None else match_referred(layer, targets, self.config)

    def layer_losses(self, layer: dict[str, dict[str, Tensor]], targets: list[ReferredTarget], matched: Tensor,
                     num_boxes: Tensor) -> dict[str, Tensor]:
        batch = torch.arange(len(targets), device=matched.device)
        losses = {}
        for name, out in layer.items():
            wanted, visible, wanted_boxes = (torch.stack(parts) for parts in zip(*(t.of(name) for t in targets)))
            seen = visible.to(out["pred_logits"].dtype)                            # (B, A): 1 where visible
            logits = out["pred_logits"]                                           # (B, A, Q)
            is_referred = torch.zeros_like(logits)
            is_referred[batch, :, matched] = seen
            losses[f"loss_is_referred_{name}"] = sigmoid_focal_elements(logits, is_referred).sum() / num_boxes
            # the matched query's boxes in the frames where the target is visible (masked: no boolean indexing), or
            # in every frame, an absent object's box all zeros (SgMg, loss.boxes_in_absent_frames)
            boxes = out["pred_boxes"][batch, :, matched]                          # (B, A, 4)
            box_frames = torch.ones_like(seen) if self.config.boxes_in_absent_frames else seen
            l1 = F.l1_loss(boxes, wanted_boxes, reduction="none").sum(-1)         # (B, A)
            losses[f"loss_box_l1_{name}"] = (l1 * box_frames).sum() / num_boxes
            giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(wanted_boxes))
            losses[f"loss_giou_{name}"] = ((1 - giou) * box_frames).sum() / num_boxes
            # (B, A, H, W): the matched query's, or the only one refined (matched in the model's forward)
            refined = matched if out["pred_masks"].shape[2] > 1 else torch.zeros_like(matched)
            masks = out["pred_masks"][batch, :, refined]
            low = out["pred_masks_low"][batch, :, matched]
            wanted_low = low_resolution(wanted, low.shape[-2:])
            for suffix, predicted, target in (("", masks, wanted), ("_low", low, wanted_low)):
                predicted, target = predicted.flatten(1), target.flatten(1)
                losses[f"loss_focal{suffix}_{name}"] = sigmoid_focal_loss(predicted, target, num_boxes)
                losses[f"loss_dice{suffix}_{name}"] = dice_loss(predicted, target, num_boxes)
        if "short" in layer:
            refined = matched if layer["long"]["pred_masks"].shape[2] > 1 else torch.zeros_like(matched)
            long_probs, short_probs = (layer[p]["pred_masks"][batch, :, refined].flatten(1).sigmoid()
                                       for p in ("long", "short"))
            losses["loss_lsi"] = self.lsi_term(long_probs, short_probs, layer["long"]["pred_masks"].shape[1])
        return losses
