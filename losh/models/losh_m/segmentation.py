"""Mask generation: an FPN-like spatial decoder (MTTR) and per-query dynamic convolution kernels.

The spatial decoder takes a pathway's encoded video tokens (stride 16, D channels) and the backbone
features at strides 8 and 4, and produces mask features X at stride 4 with `mask_kernel_dim`
channels; each decoded query gives a kernel of that size (an MLP head), and its mask logits are the
1x1 convolution of X with the kernel (CondInst-style dynamic convolution).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FPNSpatialDecoder(nn.Module):
    def __init__(self, context_dim: int, fpn_dims: list[int], mask_kernel_dim: int) -> None:
        """fpn_dims: channels of the finer backbone levels, coarse to fine (stride 8, then stride 4)."""
        super().__init__()
        inter = [context_dim, context_dim // 2, context_dim // 4, context_dim // 8]
        self.lay1 = nn.Conv2d(context_dim, inter[0], 3, padding=1)
        self.gn1 = nn.GroupNorm(8, inter[0])
        self.lay2 = nn.Conv2d(inter[0], inter[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter[1])
        self.lay3 = nn.Conv2d(inter[1], inter[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter[2])
        self.lay4 = nn.Conv2d(inter[2], inter[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter[3])
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter[2], 1)
        self.out_layer = nn.Conv2d(inter[3], mask_kernel_dim, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.constant_(module.bias, 0)

    def forward(self, context: Tensor, finer: list[Tensor]) -> Tensor:
        """context (N, D, h16, w16); finer [(N, C8, h8, w8), (N, C4, h4, w4)] -> (N, k, h4, w4)."""
        x = F.relu(self.gn1(self.lay1(context)))
        x = F.relu(self.gn2(self.lay2(x)))
        lateral = self.adapter1(finer[0])
        x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
        x = F.relu(self.gn3(self.lay3(x)))
        lateral = self.adapter2(finer[1])
        x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
        x = F.relu(self.gn4(self.lay4(x)))
        return self.out_layer(x)


def dynamic_mask_logits(kernels: Tensor, mask_features: Tensor) -> Tensor:
    """kernels (L, N, Q, k), mask features (N, k, h, w) -> mask logits (L, N, Q, h, w)."""
    return torch.einsum("lnqc,nchw->lnqhw", kernels, mask_features)
