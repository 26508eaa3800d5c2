"""Video Swin's (shifted) window attention through `scaled_dot_product_attention`.

torchvision's `ShiftedWindowAttention3d` adds the relative position bias (and, in shifted blocks, -100 between
tokens that the cyclic shift brought together) to an explicit attention matrix: the matrix and its softmax are
materialised, in float32 under autocast (the bias is float32). This module computes the same function with one
`scaled_dot_product_attention` call whose additive mask is the bias plus the shift mask, in the queries' dtype
(bf16 under autocast), so that PyTorch can use a fused kernel. Parameters, buffers and their names are
torchvision's (checkpoints load unchanged); the window adapts to small inputs as torchvision's (and the official
Video Swin's) does. The shift masks depend only on the padded input size, the window, the shift and the device:
each is made once and kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

SHIFT_MASK_VALUE = -100.0     # torchvision's and the official Video Swin's, not -inf


def window_and_shift(size: list[int], window: list[int], shift: list[int]) -> tuple[list[int], list[int]]:
    """Along an axis no longer than the window, the window is the axis and there is no shift (Video Swin)."""
    window, shift = list(window), list(shift)
    for axis in range(3):
        if size[axis] <= window[axis]:
            window[axis], shift[axis] = size[axis], 0
    return window, shift


def shift_mask(padded: tuple[int, int, int], window: list[int], shift: list[int], device: torch.device) -> Tensor:
    """(windows, N, N): 0 between tokens of the same region of the shifted grid, -100 between others."""
    regions = torch.zeros(padded, device=device)
    bounds = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(3)]
    label = 0
    for d0, d1 in bounds[0]:
        for h0, h1 in bounds[1]:
            for w0, w1 in bounds[2]:
                regions[d0:d1, h0:h1, w0:w1] = label
                label += 1
    grid = [padded[i] // window[i] for i in range(3)]
    regions = regions.view(grid[0], window[0], grid[1], window[1], grid[2], window[2])
    regions = regions.permute(0, 2, 4, 1, 3, 5).reshape(grid[0] * grid[1] * grid[2], -1)
    different = regions[:, None, :] != regions[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE)


class SDPAShiftedWindowAttention3d(ShiftedWindowAttention3d):
    """torchvision's module (same parameters and buffers) with the attention through
    `scaled_dot_product_attention`."""

    def forward(self, x: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        window, shift = window_and_shift([t, h, w], self.window_size, self.shift_size)
        bias = self.get_relative_position_bias(window)[0]                        # (heads, N, N) float32
        pads = [(window[i] - (t, h, w)[i] % window[i]) % window[i] for i in range(3)]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(x.shape[1:4])
        shifted = sum(shift) > 0
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
        grid = [padded[i] // window[i] for i in range(3)]
        windows, tokens, heads = grid[0] * grid[1] * grid[2], window[0] * window[1] * window[2], self.num_heads
        x = x.view(b, grid[0], window[0], grid[1], window[1], grid[2], window[2], c)
        x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * windows, tokens, c)

        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(b * windows, tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)   # (B*nW, heads, N, d)
        if shifted:   # a mask per window: (B*nW, heads, N, N)
            mask = bias + self._shift_mask(padded, window, shift, x.device)[:, None]
            mask = mask.to(q.dtype)[None].expand(b, -1, -1, -1, -1).reshape(b * windows, heads, tokens, tokens)
        else:         # one for all windows
            mask = bias.to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        x = F.linear(out.transpose(1, 2).reshape(b * windows, tokens, c), self.proj.weight, self.proj.bias)
        x = F.dropout(x, p=self.dropout, training=self.training)

        x = x.view(b, grid[0], grid[1], grid[2], window[0], window[1], window[2], c)
        x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, *padded, c)
        if shifted:
            x = torch.roll(x, shifts=(shift[0], shift[1], shift[2]), dims=(1, 2, 3))
        return x[:, :t, :h, :w, :].contiguous()

    def _shift_mask(self, padded: tuple[int, int, int], window: list[int], shift: list[int],
                    device: torch.device) -> Tensor:
        cache = self.__dict__.setdefault("_shift_masks", {})    # not a buffer: not in the state dict
        key = (padded, tuple(window), tuple(shift), str(device))
        if key not in cache:
            cache[key] = shift_mask(padded, window, shift, device)
        return cache[key]
