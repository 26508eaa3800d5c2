"""The training loss of LoSh-M (paper eq. 7) and of the MTTR baseline: matching, then each term.

targets: one dict per sample, for its supervised frames (outputs["supervised"]: A2D the annotated
frame, Refer-YouTube-VOS every frame of the window), masks at the model's input resolution (smaller
masks, of frames padded in the batch, are zero-padded bottom/right as MTTR does):
    "instance_masks"  (A, N, H, W), or (N, H, W) for one frame: every annotated instance (N >= 1)
    "referred_index"  int: which of them the long expression refers to
    "short_mask"      (A, H, W) or (H, W), optional: the short expression's (possibly merged) mask
                      (default: the referred instance's mask)
    "long_mask"       (A, H, W) or (H, W), optional: replaces instance_masks[:, referred_index] when given

As MTTR, a query's masks over the A frames are one sequence (matched, dice and focal over the whole
sequence), its "is referred" target is "referred" in the frames where the referred instance is visible,
and the "is referred" loss is summed over the frames and divided by the number of samples.
Terms (unweighted), for the last decoder layer and, with "_aux{i}", for each earlier one:
    loss_is_referred_{long,short}   2-way softmax CE, "not referred" weighted by eos_coef (0.1)
    loss_dice_{long,short}          over all matched instances, / number of instances
    loss_focal_{long,short}         idem (alpha 0.25, gamma 2, mean over pixels)
    loss_lsi                        eq. 1 on the query matched to the referred instance, batch mean
    loss_fbc                        eq. 6 (last layer only: it is on the backbone features)
and "loss": the weighted total (is_referred 2, dice 5, focal 2, lsi 5, fbc 0.1 in the paper).
"""
from __future__ import annotations

import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from losh.errors import NonFiniteOutputs
from losh.losses import dice_loss, fbc_loss, is_referred_loss, lsi_loss, sigmoid_focal_loss
from losh.matcher import FrameTargets, LongShortMatcher, upsampled_logits, upsampled_probs
from schemas.config import LossConfig, ModelConfig

PATHWAYS = ("long", "short")


class SetCriterion(nn.Module):
    def __init__(self, config: LossConfig, use_short_text: bool = True) -> None:
        super().__init__()
        self.config = config
        self.use_short_text = use_short_text
        self.matcher = LongShortMatcher(config.match_is_referred, config.match_dice, config.match_lsi,
                                        config.lsi_threshold, config.lsi_epsilon)
        self.weights = {"is_referred": config.is_referred, "dice": config.dice, "focal": config.focal,
                        "lsi": config.lsi, "fbc": config.fbc}

    def weight_of(self, key: str) -> float:
        """The weight of a loss key: loss_dice_long_aux1 -> the dice weight."""
        base = re.sub(r"_aux\d+$", "", key)[len("loss_"):]
        base = re.sub(r"_(long|short)$", "", base)
        return self.weights[base]

    def forward(self, outputs: dict, targets: list[dict], *, flows: Tensor | None = None,
                flow_valid: Tensor | None = None, flow_frame_size: tuple[int, int] | None = None
                ) -> dict[str, Tensor]:
        if self.use_short_text and "short" not in outputs:
            raise ValueError("this config trains the short pathway: call the model with short_texts")
        grid = tuple(outputs["long"]["pred_masks"].shape[-2:]) if self.config.mask_resolution == "stride4" else None
        frame_targets = prepare_targets(targets, tuple(outputs["input_size"]), outputs["long"]["pred_masks"].device,
                                        grid)
        supervised = outputs.get("supervised") or [outputs["annotated_index"]]
        positions = [outputs["frame_indices"].index(p) for p in supervised]
        if any(t.long_masks.shape[1] != len(positions) * t.size[0] * t.size[1] for t in frame_targets):
            raise ValueError(f"the targets hold masks of another number of frames than the {len(positions)} "
                             "supervised positions")
        pathways = [name for name in PATHWAYS if name in outputs]
        layers = [("", {p: _at_frames(outputs[p], positions) for p in pathways})]
        if self.config.aux_loss:
            for i in range(len(outputs["long"]["aux_outputs"])):
                layers.append((f"_aux{i}", {p: _at_frames(outputs[p]["aux_outputs"][i], positions)
                                            for p in pathways}))
        losses: dict[str, Tensor] = {}
        if self.weights["fbc"] > 0:
            losses["loss_fbc"] = fbc_term(outputs, self.config, flows, flow_valid, flow_frame_size)
        for suffix, layer in layers:
            try:
                indices = self.matcher(layer, frame_targets)
            except NonFiniteOutputs as error:
                raise NonFiniteOutputs(f"{error}: the model's predictions are not finite",
                                       {**{k: float(v.detach()) for k, v in losses.items()},
                                        **_non_finite_counts(outputs)}) from None
            losses.update({k + suffix: v for k, v in self.layer_losses(layer, frame_targets, indices).items()})
        losses["loss"] = sum(self.weight_of(k) * v for k, v in losses.items())
        return losses

    def layer_losses(self, layer: dict[str, dict[str, Tensor]], targets: list[FrameTargets],
                     indices: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        num_masks = average_over_processes(sum(len(t.long_masks) for t in targets), targets[0].long_masks.device)
        referred_queries = torch.stack([queries[instances == t.referred_index][0]
                                        for (queries, instances), t in zip(indices, targets)])
        frames = layer["long"]["pred_is_referred"].shape[1]
        visible = torch.cat([t.visible.to(referred_queries.device) for t in targets])        # (B*A,)
        losses = {}
        for name, out in layer.items():
            predicted = torch.cat([upsampled_logits(out["pred_masks"][b][queries], t.size)
                                   for b, ((queries, _), t) in enumerate(zip(indices, targets))])
            wanted = torch.cat([(t.long_masks if name == "long" else t.short_masks)[instances]
                                for (_, instances), t in zip(indices, targets)])
            losses[f"loss_is_referred_{name}"] = is_referred_loss(
                out["pred_is_referred"].flatten(0, 1), referred_queries.repeat_interleave(frames),
                self.config.eos_coef, visible, normaliser=len(targets))
            losses[f"loss_dice_{name}"] = dice_loss(predicted, wanted, num_masks)
            losses[f"loss_focal_{name}"] = sigmoid_focal_loss(predicted, wanted, num_masks)
        if "short" in layer:
            batch = range(len(targets))
            long_ref = torch.cat([upsampled_probs(layer["long"]["pred_masks"][b][referred_queries[b], None],
                                                  targets[b].size) for b in batch])
            short_ref = torch.cat([upsampled_probs(layer["short"]["pred_masks"][b][referred_queries[b], None],
                                                   targets[b].size) for b in batch])
            losses["loss_lsi"] = lsi_loss(long_ref, short_ref, self.config.lsi_threshold,
                                          self.config.lsi_epsilon).mean()
        return losses


def fbc_term(outputs: dict, config: LossConfig, flows: Tensor | None, flow_valid: Tensor | None,
             flow_frame_size: tuple[int, int] | None) -> Tensor:
    """L_fbc (eq. 6) on the model's `fbc_features` (both architectures)."""
    if flows is None:
        raise ValueError(f"L_fbc is on (loss.fbc = {config.fbc}) but no flows were given: pass "
                         "flows and flow_valid, or use the 'wo-fbc' ablation")
    features = outputs["fbc_features"]
    if flow_valid is None:
        flow_valid = torch.ones(flows.shape[:2], dtype=torch.bool, device=flows.device)
    return fbc_loss(features, flows.to(features.device), flow_valid.to(features.device),
                    outputs["annotated_index"], config.fbc_variant, frame_size=flow_frame_size,
                    padding_mask=outputs.get("fbc_padding_mask"), reduction=config.fbc_reduction)


def average_over_processes(count: int, device: torch.device) -> float:
    """The mean of `count` over the DDP processes, at least 1 (DETR/MTTR normalise the mask losses by the
    number of target masks averaged across processes, so every process's loss has the same scale)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return max(float(count), 1.0)
    total = torch.tensor([float(count)], device=device)
    dist.all_reduce(total)
    return max(total.item() / dist.get_world_size(), 1.0)


def _non_finite_counts(outputs: dict) -> dict[str, float]:
    """{"non_finite_long_pred_masks": n, ...} over the last layer's outputs and the L_fbc features."""
    tensors = {f"{p}_{k}": outputs[p][k] for p in PATHWAYS if p in outputs for k in ("pred_masks", "pred_is_referred")}
    if "fbc_features" in outputs:
        tensors["fbc_features"] = outputs["fbc_features"]
    return {f"non_finite_{name}": float((~torch.isfinite(t.detach())).sum()) for name, t in tensors.items()}


def _at_frames(out: dict[str, Tensor], positions: list[int]) -> dict[str, Tensor]:
    """The supervised frames: "pred_is_referred" (B, A, Q, 2), "pred_masks" (B, Q, A, h, w), in float32
    (losses in float32 even when the model runs under autocast)."""
    return {"pred_is_referred": out["pred_is_referred"][:, positions].float(),
            "pred_masks": out["pred_masks"][:, positions].transpose(1, 2).float()}


def prepare_targets(targets: list[dict], input_size: tuple[int, int], device: torch.device | None = None,
                    grid: tuple[int, int] | None = None) -> list[FrameTargets]:
    """FrameTargets at the input size, or, with `grid`, area-averaged onto that (coarser) grid and
    thresholded at one half (loss.mask_resolution "stride4")."""
    prepared = []
    for index, target in enumerate(targets):
        instances = torch.as_tensor(target["instance_masks"], device=device).float()
        if instances.dim() == 3:
            instances = instances[None]                                   # one supervised frame
        if instances.dim() != 4 or instances.shape[1] < 1:
            raise ValueError(f"target {index}: instance_masks must be (A, N >= 1, H, W) or (N, H, W), got "
                             f"{tuple(instances.shape)}")
        referred = int(target["referred_index"])
        if not 0 <= referred < instances.shape[1]:
            raise ValueError(f"target {index}: referred_index {referred} outside {instances.shape[1]} instances")
        frames = instances.shape[0]
        long_masks = instances.clone()
        if target.get("long_mask") is not None:
            long_masks[:, referred] = torch.as_tensor(target["long_mask"], device=device).float().reshape(
                frames, *instances.shape[-2:])
        short_masks = long_masks.clone()
        if target.get("short_mask") is not None:
            short_masks[:, referred] = torch.as_tensor(target["short_mask"], device=device).float().reshape(
                frames, *instances.shape[-2:])
        visible = long_masks[:, referred].flatten(1).any(dim=1)
        long_masks, short_masks = (_pad_to(m, input_size, index) for m in (long_masks, short_masks))
        if grid is not None:
            long_masks, short_masks = ((F.interpolate(m, size=grid, mode="area") > 0.5).float()
                                       for m in (long_masks, short_masks))
        # (A, N, H, W) -> (N, A*H*W): an instance's masks over the frames as one sequence
        long_masks, short_masks = (m.transpose(0, 1).flatten(1) for m in (long_masks, short_masks))
        prepared.append(FrameTargets(long_masks, short_masks, referred, grid or input_size, visible))
    return prepared


def _pad_to(masks: Tensor, size: tuple[int, int], index: int) -> Tensor:
    h, w = masks.shape[-2:]
    if h > size[0] or w > size[1]:
        raise ValueError(f"target {index}: masks of {h}x{w} larger than the model input {size[0]}x{size[1]}")
    return F.pad(masks, (0, size[1] - w, 0, size[0] - h))


def build_criterion(config: ModelConfig) -> nn.Module:
    """LoSh-M's criterion (this file) or LoSh-S's (`losh.sgmg.criterion`), as the config's architecture."""
    if config.architecture == "sgmg":
        from losh.sgmg.criterion import SgmgCriterion

        return SgmgCriterion(config.loss, use_short_text=config.use_short_text)
    return SetCriterion(config.loss, use_short_text=config.use_short_text)
