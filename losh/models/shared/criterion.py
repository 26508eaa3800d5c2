"""The skeleton of every base model's training loss (paper eq. 7): what LoSh adds, and how it is assembled.

targets: one dict per sample, for its supervised frames (outputs["supervised"]: A2D the annotated frame,
Refer-YouTube-VOS every frame of the window), masks at most the model's input size (smaller masks, of frames
padded in the batch, are zero-padded bottom/right as MTTR and SgMg do):
    "instance_masks"  (A, N, H, W), or (N, H, W) for one frame: every annotated instance (N >= 1)
    "referred_index"  int: which of them the long expression refers to
    "long_mask"       (A, H, W) or (H, W), optional: replaces instance_masks[:, referred_index] when given
    "short_mask"      (A, H, W) or (H, W), optional: the short expression's (possibly merged) mask
                      (default: the long expression's)
    "valid_size"      (h, w), optional: the frame's unpadded size (LoSh-S normalises its boxes by it)

`LongShortCriterion.forward` checks the outputs against the targets, takes the supervised frames of the last
decoder layer and (with `aux_loss`) of each earlier one, adds L_fbc (eq. 6, once: it is on the backbone
features), lets the base model match every layer and compute each layer's terms, and sums them with their
weights ("loss"). A base model's criterion defines `model_targets`, `normaliser`, `at_frames`, `match` (or
`match_layers`) and `layer_losses`; the L_lsi term (eq. 1) is `lsi_term` on the matched query's long and short
masks. Nothing here reads a number back from the device (the losses stay tensors; a base model's matching may,
once).
Keys: "loss_<term>[_long|_short][_aux<i>]", weighted by `weights[<term>]`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from losh.errors import NonFiniteOutputs
from losh.models.shared.losses import fbc_loss, lsi_loss
from losh.schemas.config import LossConfig

PATHWAYS = ("long", "short")


@dataclass(frozen=True)
class ReferredMasks:
    """One sample's targets over its A supervised frames, zero-padded to the model's input size."""

    instances: Tensor               # (A, N, H, W) float: every annotated instance
    referred_index: int             # which instance the long expression refers to
    long: Tensor                    # (A, H, W) the long expression's mask (the referred instance's, or long_mask)
    short: Tensor                   # (A, H, W) the short expression's (possibly merged) mask
    valid_size: tuple[int, int]     # the frame's unpadded (h, w)

    @property
    def frames(self) -> int:
        return self.instances.shape[0]


def parse_targets(targets: list[dict], input_size: tuple[int, int], device: torch.device | None = None
                  ) -> list[ReferredMasks]:
    """The target dicts (module docstring) as `ReferredMasks`, checked, at `input_size`."""
    parsed = []
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
        frames, size = instances.shape[0], tuple(instances.shape[-2:])
        if size[0] > input_size[0] or size[1] > input_size[1]:
            raise ValueError(f"target {index}: masks of {size[0]}x{size[1]} larger than the model input "
                             f"{input_size[0]}x{input_size[1]}")
        long = instances[:, referred]
        if target.get("long_mask") is not None:
            long = torch.as_tensor(target["long_mask"], device=device).float().reshape(frames, *size)
        short = long
        if target.get("short_mask") is not None:
            short = torch.as_tensor(target["short_mask"], device=device).float().reshape(frames, *size)
        pad = (0, input_size[1] - size[1], 0, input_size[0] - size[0])
        valid = tuple(int(v) for v in target["valid_size"]) if target.get("valid_size") is not None else size
        parsed.append(ReferredMasks(F.pad(instances, pad), referred, F.pad(long, pad), F.pad(short, pad), valid))
    return parsed


def average_over_processes(count: int | Tensor, device: torch.device) -> Tensor:
    """The mean of `count` over the DDP processes, at least 1, as a 0-dim float tensor on `device` (DETR, MTTR and
    SgMg normalise their losses by the number of targets averaged across processes, so every process's loss has
    the same scale). Nothing is read back to the host: a count computed on the device stays there."""
    total = count.float().to(device) if isinstance(count, Tensor) else torch.full((), float(count), device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return total.clamp(min=1.0)


def fbc_term(outputs: dict, config: LossConfig, flows: Tensor | None, flow_valid: Tensor | None,
             flow_frame_size: tuple[int, int] | None) -> Tensor:
    """L_fbc (eq. 6) on the model's `fbc_features`."""
    if flows is None:
        raise ValueError(f"L_fbc is on (loss.fbc = {config.fbc}) but no flows were given: pass "
                         "flows and flow_valid, or use the 'wo-fbc' ablation")
    features = outputs["fbc_features"]
    if flow_valid is None:
        flow_valid = torch.ones(flows.shape[:2], dtype=torch.bool, device=flows.device)
    return fbc_loss(features, flows.to(features.device), flow_valid.to(features.device),
                    outputs["annotated_index"], config.fbc_variant, frame_size=flow_frame_size,
                    padding_mask=outputs.get("fbc_padding_mask"), reduction=config.fbc_reduction)


def non_finite_counts(outputs: dict) -> dict[str, float]:
    """{"non_finite_long_pred_masks": n, ...} over the last layer's tensors and the L_fbc features."""
    tensors = {f"{p}_{k}": v for p in PATHWAYS if p in outputs for k, v in outputs[p].items()
               if isinstance(v, Tensor) and v.is_floating_point()}
    if "fbc_features" in outputs:
        tensors["fbc_features"] = outputs["fbc_features"]
    return {f"non_finite_{name}": float((~torch.isfinite(t.detach())).sum()) for name, t in tensors.items()}


class LongShortCriterion(nn.Module):
    """Eq. 7 for a base model: its own terms per pathway and layer, L_lsi and L_fbc (module docstring)."""

    def __init__(self, config: LossConfig, use_short_text: bool, weights: dict[str, float]) -> None:
        super().__init__()
        self.config = config
        self.use_short_text = use_short_text
        self.weights = {**weights, "lsi": config.lsi, "fbc": config.fbc}

    def weight_of(self, key: str) -> float:
        """The weight of a loss key: loss_dice_low_long_aux1 -> the weight of "dice_low"."""
        base = re.sub(r"_aux\d+$", "", key)[len("loss_"):]
        return self.weights[re.sub(r"_(long|short)$", "", base)]

    def forward(self, outputs: dict, targets: list[dict], *, flows: Tensor | None = None,
                flow_valid: Tensor | None = None, flow_frame_size: tuple[int, int] | None = None
                ) -> dict[str, Tensor]:
        if self.use_short_text and "short" not in outputs:
            raise ValueError("this config trains the short pathway: call the model with short_texts")
        supervised = outputs.get("supervised") or [outputs["annotated_index"]]
        positions = [outputs["frame_indices"].index(p) for p in supervised]
        parsed = parse_targets(targets, tuple(outputs["input_size"]), self.device_of(outputs))
        if any(t.frames != len(positions) for t in parsed):
            raise ValueError(f"the targets hold masks of another number of frames than the {len(positions)} "
                             "supervised positions")
        model_targets = self.model_targets(parsed, outputs)
        pathways = [name for name in PATHWAYS if name in outputs]
        layers = [("", {p: self.at_frames(outputs[p], positions) for p in pathways})]
        if self.config.aux_loss:
            layers += [(f"_aux{i}", {p: self.at_frames(outputs[p]["aux_outputs"][i], positions) for p in pathways})
                       for i in range(len(outputs["long"]["aux_outputs"]))]
        losses: dict[str, Tensor] = {}
        if self.weights["fbc"] > 0:
            losses["loss_fbc"] = fbc_term(outputs, self.config, flows, flow_valid, flow_frame_size)
        normaliser = self.normaliser(model_targets)
        try:
            matches = self.match_layers([layer for _, layer in layers], model_targets)
        except NonFiniteOutputs as error:
            raise NonFiniteOutputs(f"{error}: the model's predictions are not finite",
                                   {**{k: float(v.detach()) for k, v in losses.items()},
                                    **non_finite_counts(outputs)}) from None
        for (suffix, layer), matched in zip(layers, matches):
            terms = self.layer_losses(layer, model_targets, matched, normaliser)
            losses.update({k + suffix: v for k, v in terms.items()})
        losses["loss"] = sum(self.weight_of(k) * v for k, v in losses.items())
        return losses

    def lsi_term(self, long_probs: Tensor, short_probs: Tensor, frames: int = 1) -> Tensor:
        """loss_lsi: eq. 1 on matched queries' long and short mask probabilities (M, A*P) over A supervised
        frames, per frame (loss.frame_terms "per_frame") or over the sequence, mean over the masks."""
        frames = frames if self.config.frame_terms == "per_frame" else 1
        return lsi_loss(long_probs, short_probs, self.config.lsi_threshold, self.config.lsi_epsilon, frames).mean()

    # ------------------------------------------------------------------------- a base model's parts

    def device_of(self, outputs: dict) -> torch.device:
        """Where the targets go: the device of the model's outputs."""
        return next(v for v in outputs["long"].values() if isinstance(v, Tensor)).device

    def model_targets(self, parsed: list[ReferredMasks], outputs: dict) -> list:
        """The base model's form of the targets (e.g. at its mask resolution)."""
        raise NotImplementedError

    def normaliser(self, targets: list) -> Tensor:
        """What the mask and class terms are divided by (a count of targets, averaged over processes)."""
        raise NotImplementedError

    def at_frames(self, out: dict[str, Tensor], positions: list[int]) -> dict[str, Tensor]:
        """One pathway's outputs of one layer at the supervised frames, in float32."""
        raise NotImplementedError

    def match(self, layer: dict[str, dict[str, Tensor]], targets: list):
        """Which queries are supervised by which targets, in this layer."""
        raise NotImplementedError

    def match_layers(self, layers: list[dict[str, dict[str, Tensor]]], targets: list) -> list:
        """`match` of every layer (a base model may match all layers at once, e.g. to read costs back once)."""
        return [self.match(layer, targets) for layer in layers]

    def layer_losses(self, layer: dict[str, dict[str, Tensor]], targets: list, matched, normaliser: Tensor
                     ) -> dict[str, Tensor]:
        """The unweighted terms of one layer (without the "_aux" suffix)."""
        raise NotImplementedError
