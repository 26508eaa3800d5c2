"""Devices, processes and precision: where a run computes (one process, torchrun/DDP, CPU or CUDA).

Shared by training, evaluation and the benchmarks.
"""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK (then the process group is joined, also for one process,
    so a one-GPU torchrun exercises NCCL as a multi-GPU one does); a plain process runs alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ:
        return Dist()
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(rank, world, local)


def select_device(d: Dist, device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


AMP_CHOICES = ("off", "bf16")   # inference precision: float32, or bf16 autocast on CUDA


def autocast_for(device: torch.device, amp: str):
    """bf16 autocast on CUDA (no loss scaling needed), fp16 with a GradScaler, float32 on the CPU."""
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def padding_mask_of(valid_size: torch.Tensor, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(B, H, W) True on the bottom/right padding that `collate` added."""
    h = torch.arange(size[0], device=device)[None, :, None]
    w = torch.arange(size[1], device=device)[None, None, :]
    vs = valid_size.to(device)
    return (h >= vs[:, 0, None, None]) | (w >= vs[:, 1, None, None])


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors (also in lists and nested dicts) on `device`, copied without waiting for it (the loader
    pins them on CUDA)."""
    non_blocking = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=non_blocking)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device, non_blocking=non_blocking) for t in v]
        elif isinstance(v, dict):
            out[k] = to_device(v, device)
        else:
            out[k] = v
    return out
