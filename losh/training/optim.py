"""The optimiser's parameter groups and the learning-rate warm-up (MTTR's AdamW with a step schedule)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, backbone_lr: float, weight_decay: float,
                 text_encoder_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups as MTTR: backbone at `backbone_lr`, the text encoder (when not frozen)
    at `text_encoder_lr` (default `backbone_lr`), everything else at `lr`; frozen parameters are left out."""
    groups = {"backbone": [], "text_encoder": [], "rest": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = name.split(".", 1)[0]
        groups[part if part in ("backbone", "text_encoder") else "rest"].append(parameter)
    lrs = {"rest": lr, "backbone": backbone_lr,
           "text_encoder": backbone_lr if text_encoder_lr is None else text_encoder_lr}
    return [{"name": name, "params": params, "lr": lrs[name], "weight_decay": weight_decay}
            for name, params in groups.items() if params]


@contextmanager
def warmed_up(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int):
    """Linear warm-up: during the first `warmup_steps` optimiser steps, step `step` (0-based) runs at
    (step + 1) / warmup_steps of each group's scheduled lr; the schedule's own lr is restored after the step,
    so the epoch schedule (MultiStepLR) is untouched."""
    if step >= warmup_steps:
        yield
        return
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, scheduled):
        group["lr"] = lr * (step + 1) / warmup_steps
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr


def main_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the transformer/heads group (the backbone's is 10x lower)."""
    return next((g["lr"] for g in optimizer.param_groups if g.get("name") == "rest"), optimizer.param_groups[0]["lr"])
