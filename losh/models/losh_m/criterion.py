"""The training loss of LoSh-M (paper eq. 7) and of the MTTR baseline: matching, then each term.

Targets and the loss's skeleton are `losh.models.shared.criterion`'s. Every annotated instance is a target:
the long pathway's are the instance masks, the short pathway's the same with the referred one replaced by the
short expression's (possibly merged) mask.
As MTTR, over A supervised frames the mask terms are per frame (dice and focal of each frame's mask, divided by
the number of frame masks; `loss.frame_terms` "sequence": a query's masks over the frames as one mask), a
pathway's "is referred" target is "referred" in the frames where its own target is visible (eq. 3;
`loss.short_visibility` "long": the short pathway takes the long target's), and the "is referred" loss is summed
over the frames and divided by the number of samples.
Terms (unweighted), for the last decoder layer and, with "_aux{i}", for each earlier one:
    loss_is_referred_{long,short}   2-way softmax CE, "not referred" weighted by eos_coef (0.1)
    loss_dice_{long,short}          over all matched instances, / number of instances
    loss_focal_{long,short}         idem (alpha 0.25, gamma 2, mean over pixels)
    loss_lsi                        eq. 1 on the query matched to the referred instance (per frame), mean
                                    (`loss.lsi_queries` "matched": on every matched query, as the official code)
    loss_fbc                        eq. 6 (last layer only: it is on the backbone features)
and "loss": the weighted total (is_referred 2, dice 5, focal 2, lsi 5, fbc 0.1 in the paper).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losh.models.losh_m.matcher import Assignment, FrameTargets, LongShortMatcher, upsampled_logits, upsampled_probs
from losh.models.shared.criterion import LongShortCriterion, ReferredMasks, average_over_processes, parse_targets
from losh.models.shared.long_short import take_positions
from losh.models.shared.losses import by_frame, dice_loss, is_referred_loss, sigmoid_focal_loss
from losh.schemas.config import LossConfig


class LoShMCriterion(LongShortCriterion):
    def __init__(self, config: LossConfig, use_short_text: bool = True) -> None:
        super().__init__(config, use_short_text,
                         {"is_referred": config.is_referred, "dice": config.dice, "focal": config.focal})
        self.matcher = LongShortMatcher(config.match_is_referred, config.match_dice, config.match_lsi,
                                        config.lsi_threshold, config.lsi_epsilon, config.frame_terms,
                                        config.short_visibility, config.match_lsi_columns)

    def model_targets(self, parsed: list[ReferredMasks], outputs: dict) -> list[FrameTargets]:
        grid = tuple(outputs["long"]["pred_masks"].shape[-2:]) if self.config.mask_resolution == "stride4" else None
        return [frame_targets(t, grid) for t in parsed]

    def normaliser(self, targets: list[FrameTargets]) -> Tensor:
        """MTTR's num_masks: the instances of the batch (all processes' mean)."""
        return average_over_processes(sum(len(t.long_masks) for t in targets), targets[0].long_masks.device)

    def at_frames(self, out: dict[str, Tensor], positions: list[int]) -> dict[str, Tensor]:
        """"pred_is_referred" (B, A, Q, 2), "pred_masks" (B, Q, A, h, w), in float32 (losses in float32 even when
        the model runs under autocast)."""
        return {"pred_is_referred": take_positions(out["pred_is_referred"], positions).float(),
                "pred_masks": take_positions(out["pred_masks"], positions).transpose(1, 2).float()}

    def match_layers(self, layers: list[dict[str, dict[str, Tensor]]], targets: list[FrameTargets]
                     ) -> list[list[Assignment]]:
        return self.matcher.match_layers(layers, targets)    # all layers' costs read back at once

    def layer_losses(self, layer: dict[str, dict[str, Tensor]], targets: list[FrameTargets],
                     matched: list[Assignment], num_masks: Tensor) -> dict[str, Tensor]:
        referred = [m.referred_query for m in matched]                                  # on the host
        frames = layer["long"]["pred_is_referred"].shape[1]
        device = layer["long"]["pred_is_referred"].device
        referred_queries = torch.tensor(referred).repeat_interleave(frames).to(device, non_blocking=True)
        # dice and focal per frame (MTTR): each frame's mask a mask of its own, divided by the frame masks
        per_frame = frames if self.config.frame_terms == "per_frame" else 1
        losses = {}
        for name, out in layer.items():
            predicted = torch.cat([upsampled_logits(out["pred_masks"][b][m.queries], t.size)
                                   for b, (m, t) in enumerate(zip(matched, targets))])
            wanted = torch.cat([(t.long_masks if name == "long" else t.short_masks)[m.instances]
                                for m, t in zip(matched, targets)])
            predicted, wanted = (by_frame(x, per_frame).flatten(0, 1) for x in (predicted, wanted))
            visible = torch.cat([_visible(t, name, self.config.short_visibility, frames).to(device) for t in targets])
            losses[f"loss_is_referred_{name}"] = is_referred_loss(
                out["pred_is_referred"].flatten(0, 1), referred_queries, self.config.eos_coef, visible,
                normaliser=len(targets))
            losses[f"loss_dice_{name}"] = dice_loss(predicted, wanted, num_masks * per_frame)
            losses[f"loss_focal_{name}"] = sigmoid_focal_loss(predicted, wanted, num_masks * per_frame)
        if "short" in layer:
            queries = ([m.queries for m in matched] if self.config.lsi_queries == "matched"
                       else [slice(q, q + 1) for q in referred])
            long_ref, short_ref = (torch.cat([upsampled_probs(layer[p]["pred_masks"][b][q], t.size)
                                              for b, (q, t) in enumerate(zip(queries, targets))])
                                   for p in ("long", "short"))
            losses["loss_lsi"] = self.lsi_term(long_ref, short_ref, frames)
        return losses


def _visible(target: FrameTargets, pathway: str, short_visibility: str, frames: int) -> Tensor:
    visible = target.visible_for(pathway, short_visibility)
    return visible if visible is not None else torch.ones(frames, dtype=torch.bool)


def frame_targets(target: ReferredMasks, grid: tuple[int, int] | None = None) -> FrameTargets:
    """A sample's targets as LoSh-M's matcher takes them: at the input size, or, with `grid`, area-averaged onto
    that (coarser) grid and thresholded at one half (loss.mask_resolution "stride4"); each instance's masks over
    the frames one after the other, and where the long and short targets are visible."""
    referred = target.referred_index
    long_masks = target.instances.clone()
    long_masks[:, referred] = target.long
    short_masks = long_masks.clone()
    short_masks[:, referred] = target.short
    visible = target.long.flatten(1).any(dim=1)
    short_visible = target.short.flatten(1).any(dim=1)
    if grid is not None:
        long_masks, short_masks = ((F.interpolate(m, size=grid, mode="area") > 0.5).float()
                                   for m in (long_masks, short_masks))
    size = grid or tuple(target.instances.shape[-2:])
    # (A, N, H, W) -> (N, A*H*W): an instance's masks over the frames, frame by frame
    long_masks, short_masks = (m.transpose(0, 1).flatten(1) for m in (long_masks, short_masks))
    return FrameTargets(long_masks, short_masks, referred, size, visible, short_visible)


def prepare_targets(targets: list[dict], input_size: tuple[int, int], device: torch.device | None = None,
                    grid: tuple[int, int] | None = None) -> list[FrameTargets]:
    """The target dicts (`losh.models.shared.criterion`) as LoSh-M's `FrameTargets`."""
    return [frame_targets(t, grid) for t in parse_targets(targets, input_size, device)]
