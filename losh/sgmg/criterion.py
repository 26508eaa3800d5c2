"""The training loss of LoSh-S and of the SgMg baseline: SgMg's matching and terms per pathway, plus LoSh's.

Matching (`losh.sgmg.matcher`): per sample the referred object gets one query, by SgMg's cost summed over
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
and loss_lsi (eq. 1 on the matched query's long and short masks, batch mean) and loss_fbc (eq. 6), as LoSh-M.
num_boxes is SgMg's: the number of supervised frames where the object is visible (mean over processes, >= 1).
Boxes come from the masks (a mask-only data set): normalised (cx, cy, w, h) of the frame's valid area.
Unlike SgMg, frames without the object add no box term (SgMg regresses its query's box to zeros there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from losh.criterion import average_over_processes, fbc_term
from losh.losses import dice_loss, lsi_loss, sigmoid_focal_elements, sigmoid_focal_loss
from losh.sgmg.matcher import ReferredTarget, low_resolution, match_referred, referred_targets
from schemas.config import LossConfig

PATHWAYS = ("long", "short")


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
            matched = layer["long"].get("matched_query")     # matched by the model in its forward
            if matched is None:
                matched = match_referred(layer, referred, self.config)
            losses.update({k + suffix: v for k, v in self.layer_losses(layer, referred, matched, num_boxes).items()})
        losses["loss"] = sum(self.weight_of(k) * v for k, v in losses.items())
        return losses

    def layer_losses(self, layer: dict[str, dict[str, Tensor]], targets: list[ReferredTarget], matched: Tensor,
                     num_boxes: float) -> dict[str, Tensor]:
        batch = torch.arange(len(targets), device=matched.device)
        losses = {}
        for name, out in layer.items():
            masks_of, visible_of, boxes_of = zip(*(t.of(name) for t in targets))
            visible = torch.stack(visible_of)                                     # (B, A)
            logits = out["pred_logits"]                                           # (B, A, Q)
            is_referred = torch.zeros_like(logits)
            is_referred[batch, :, matched] = visible.to(logits.dtype)
            losses[f"loss_is_referred_{name}"] = sigmoid_focal_elements(logits, is_referred).sum() / num_boxes
            boxes = out["pred_boxes"][batch, :, matched][visible]                 # (visible frames, 4)
            wanted_boxes = torch.cat([b[v] for b, v in zip(boxes_of, visible_of)])
            losses[f"loss_box_l1_{name}"] = F.l1_loss(boxes, wanted_boxes, reduction="sum") / num_boxes
            giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(wanted_boxes)))
            losses[f"loss_giou_{name}"] = (1 - giou).sum() / num_boxes
            wanted = torch.stack(masks_of)                                        # (B, A, H, W)
            # (B, A, H, W): the matched query's, or the only one refined (matched in the model's forward)
            refined = matched if out["pred_masks"].shape[2] > 1 else torch.zeros_like(matched)
            masks = out["pred_masks"][batch, :, refined]
            low = out["pred_masks_low"][batch, :, matched]
            wanted_low = torch.stack([low_resolution(w, low.shape[-2:]) for w in wanted])
            for suffix, predicted, target in (("", masks, wanted), ("_low", low, wanted_low)):
                predicted, target = predicted.flatten(1), target.flatten(1)
                losses[f"loss_focal{suffix}_{name}"] = sigmoid_focal_loss(predicted, target, num_boxes)
                losses[f"loss_dice{suffix}_{name}"] = dice_loss(predicted, target, num_boxes)
        if "short" in layer:
            refined = matched if layer["long"]["pred_masks"].shape[2] > 1 else torch.zeros_like(matched)
            long_probs = layer["long"]["pred_masks"][batch, :, refined].flatten(1).sigmoid()
            short_probs = layer["short"]["pred_masks"][batch, :, refined].flatten(1).sigmoid()
            losses["loss_lsi"] = lsi_loss(long_probs, short_probs, self.config.lsi_threshold,
                                          self.config.lsi_epsilon).mean()
        return losses


def _at_frames(out: dict[str, Tensor], positions: list[int]) -> dict[str, Tensor]:
    """The supervised frames' predictions (B, A, Q, ...) in float32 (losses in float32 under autocast), and the
    model's matches when it made them."""
    taken = {k: out[k][:, positions].float() for k in ("pred_logits", "pred_boxes", "pred_masks", "pred_masks_low")}
    if out.get("matched_query") is not None:
        taken["matched_query"] = out["matched_query"]
    return taken
