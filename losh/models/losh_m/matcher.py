"""Long-short matching (paper eq. 4-5 on top of MTTR's Hungarian matcher).

As in MTTR, the queries are assigned one-to-one to all annotated instances of the frame; the
instance referred by the long expression is the one whose matched query is supervised as
"referred". The cost of query q for instance j sums, over the pathways (long, and short when
present), with MTTR's weights:

    cost_is_referred * (-p(q has j's class))      j's class: "referred" for the referred instance,
                                                  "not referred" for the others (MTTR's soft cost)
    cost_dice * (-dice(sigmoid(mask_q), target_j)) long targets: the instance masks; short targets:
                                                  the same, the referred one replaced by the short
                                                  expression's (possibly merged) mask

and, for the referred instance only (L_lsi involves the referred prediction, eq. 5; `lsi_columns` "all": for
every instance, as the official LoSh code),
    cost_lsi * L_lsi(long mask_q, short mask_q).

Over several supervised frames (`frame_terms` "per_frame", MTTR's): the dice and L_lsi of each frame, averaged
over the frames (eq. 5 sums every term over the frames; the class cost is averaged too, so the argmin is eq. 5's);
"sequence": a query's masks over the frames as one mask. A pathway's "referred" class holds in the frames where
its own target is visible (eq. 3; `short_visibility` "long": the short pathway takes the long target's).
Predicted masks are upsampled (bilinear) to the targets' resolution first, as MTTR does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from losh.errors import NonFiniteOutputs
from losh.models.shared.losses import frame_mean_dice
from losh.models.shared.matching import long_short_cost


@dataclass
class FrameTargets:
    """Targets of one sample over its A supervised frames, each instance's masks concatenated over the
    frames (frame by frame: (N, A*H*W) float); `visible` (A,) bool whether the referred instance is visible in
    each frame (default: all), `short_visible` whether the short expression's mask is (default: `visible`)."""

    long_masks: Tensor
    short_masks: Tensor
    referred_index: int
    size: tuple[int, int]
    visible: Tensor | None = None
    short_visible: Tensor | None = None

    @property
    def frames(self) -> int:
        return self.long_masks.shape[-1] // (self.size[0] * self.size[1])

    def visible_for(self, pathway: str, short_visibility: str = "short") -> Tensor | None:
        """The frames where `pathway`'s referred target is visible (None: all)."""
        if pathway == "short" and short_visibility == "short" and self.short_visible is not None:
            return self.short_visible
        return self.visible


@dataclass
class LongShortMatcher:
    cost_is_referred: float = 2.0
    cost_dice: float = 5.0
    cost_lsi: float = 5.0
    lsi_threshold: float = 0.5
    lsi_epsilon: float = 1.0
    frame_terms: str = "per_frame"
    short_visibility: str = "short"
    lsi_columns: str = "referred"

    @torch.no_grad()
    def cost_matrix(self, long_logits: Tensor, long_probs: Tensor, target: FrameTargets,
                    short_logits: Tensor | None = None, short_probs: Tensor | None = None) -> Tensor:
        """One sample: logits (Q, 2) or (A, Q, 2) per supervised frame, mask probabilities (Q, A*H*W) at the
        target size -> cost (Q, N). The class cost is MTTR's, averaged over the frames: instance j's class in
        frame a is "referred" when j is the referred instance and visible in that frame."""
        n = target.long_masks.shape[0]
        if long_logits.dim() == 2:
            long_logits = long_logits[None]
            short_logits = short_logits[None] if short_logits is not None else None
        frames = long_logits.shape[0]
        per_frame = target.frames if self.frame_terms == "per_frame" else 1
        cost = long_logits.new_zeros(long_logits.shape[1], n)
        pathways = [("long", long_logits, long_probs, target.long_masks)]
        if short_logits is not None:
            pathways.append(("short", short_logits, short_probs, target.short_masks))
        for name, logits, probs, masks in pathways:
            visible = target.visible_for(name, self.short_visibility)
            visible = (visible.to(logits.device).bool() if visible is not None
                       else torch.ones(frames, dtype=torch.bool, device=logits.device))
            is_referred_class = torch.zeros(frames, n, dtype=torch.bool, device=logits.device)
            is_referred_class[:, target.referred_index] = visible
            p_referred = logits.softmax(-1)[..., 0:1]                                   # (A, Q, 1)
            p_class = torch.where(is_referred_class[:, None, :], p_referred, 1 - p_referred).mean(0)
            cost = cost - self.cost_is_referred * p_class - self.cost_dice * frame_mean_dice(probs, masks, per_frame)
        if short_probs is not None and self.cost_lsi > 0:
            lsi = long_short_cost(long_probs, short_probs, self.cost_lsi, self.lsi_threshold, self.lsi_epsilon,
                                  per_frame)
            if self.lsi_columns == "all":
                cost = cost + lsi[:, None]
            else:
                cost[:, target.referred_index] += lsi
        return cost

    @torch.no_grad()
    def costs(self, layer: dict[str, dict[str, Tensor]], targets: list[FrameTargets]) -> list[Tensor]:
        """layer: {"long": {...}, "short": {...}} with "pred_is_referred" (B, Q, 2) or (B, A, Q, 2) and
        "pred_masks" (B, Q, h, w) or (B, Q, A, h, w) of the supervised frames -> each sample's cost (Q, N), in
        float32 whatever the autocast around it (a bf16 dice numerator steps by 1/128 of itself, which can change
        the match)."""
        with torch.autocast(targets[0].long_masks.device.type, enabled=False):
            layer = {name: {k: v.float() for k, v in out.items()} for name, out in layer.items()}
            return self._costs(layer, targets)

    def _costs(self, layer: dict[str, dict[str, Tensor]], targets: list[FrameTargets]) -> list[Tensor]:
        short = layer.get("short")
        costs = []
        for b, target in enumerate(targets):
            long_probs = upsampled_probs(layer["long"]["pred_masks"][b], target.size)
            short_probs = upsampled_probs(short["pred_masks"][b], target.size) if short is not None else None
            costs.append(self.cost_matrix(layer["long"]["pred_is_referred"][b], long_probs, target,
                                          short["pred_is_referred"][b] if short is not None else None, short_probs))
        return costs

    @torch.no_grad()
    def match_layers(self, layers: list[dict[str, dict[str, Tensor]]], targets: list[FrameTargets]
                     ) -> list[list[Assignment]]:
        """Every layer's matching in one read-back: the cost matrices of all layers and samples come to the host
        together, the assignments go back to the device together (without waiting for it)."""
        costs = [self.costs(layer, targets) for layer in layers]
        flat = [cost for layer_costs in costs for cost in layer_costs]
        values = torch.cat([cost.float().flatten() for cost in flat]).cpu().numpy()   # the one device -> host copy
        chunks = np.split(values, np.cumsum([cost.numel() for cost in flat])[:-1])
        solved = []
        for k, (cost, chunk) in enumerate(zip(flat, chunks)):
            layer, b = divmod(k, len(targets))
            solved.append(_solve(chunk.reshape(cost.shape), f"layer {layer}, sample {b}"))
        packed = torch.from_numpy(np.concatenate([np.concatenate(pair) for pair in solved]).astype(np.int64))
        packed = packed.to(flat[0].device, non_blocking=True)             # host -> device, no wait
        assignments, start = [], 0
        for k, (rows, cols) in enumerate(solved):
            n = len(rows)
            target = targets[k % len(targets)]
            assignments.append(Assignment(packed[start:start + n], packed[start + n:start + 2 * n],
                                          int(rows[cols == target.referred_index][0])))
            start += 2 * n
        return [assignments[i:i + len(targets)] for i in range(0, len(assignments), len(targets))]

    def __call__(self, layer: dict[str, dict[str, Tensor]], targets: list[FrameTargets]) -> list[tuple[Tensor, Tensor]]:
        """One layer: per sample (query indices, instance indices)."""
        return [(a.queries, a.instances) for a in self.match_layers([layer], targets)[0]]


@dataclass(frozen=True)
class Assignment:
    """One sample's matching: its queries and the instances they are matched to (on the device), and the query
    matched to the referred instance (on the host)."""

    queries: Tensor
    instances: Tensor
    referred_query: int


def _solve(cost: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """scipy's minimum-cost assignment of a (Q, N) cost on the host: (query indices sorted, instance indices)."""
    if not np.isfinite(cost).all():   # NaN predictions: no assignment exists (the criterion reports it)
        raise NonFiniteOutputs(f"the matching cost of {what} holds NaN/inf", {})
    return linear_sum_assignment(cost)


def assign(cost: Tensor, what: str = "the sample") -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a (Q, N) cost, Q >= N: (query indices sorted, instance indices),
    on the cost's device. scipy's solver, as in MTTR and DETR: deterministic, ties always resolve the same way."""
    rows, cols = _solve(cost.float().cpu().numpy(), what)
    return torch.as_tensor(rows, device=cost.device), torch.as_tensor(cols, device=cost.device)


def upsampled_probs(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(M, h, w) or (M, A, h, w) logits -> (M, A*H*W) probabilities at `size`."""
    return upsampled_logits(mask_logits, size).sigmoid()


def upsampled_logits(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(M, h, w) or (M, A, h, w) logits -> (M, A*H*W) at `size`, each frame upsampled bilinearly."""
    frames = mask_logits if mask_logits.dim() == 4 else mask_logits[:, None]
    if frames.shape[-2:] != tuple(size):
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
    return frames.flatten(1)
