"""Multi-scale deformable attention (Deformable DETR, as SgMg uses it), in pure PyTorch.

Each query looks at a few points per head and feature level, placed around its reference point by
learned offsets, and mixes their bilinearly sampled values with learned weights. The sampling is
F.grid_sample with the official CUDA op's convention (pixel centres at (i + 0.5) / W, zeros outside
the map), so weights trained with either form give the same outputs.
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# id(tensor) -> the Python (H_l, W_l) of the spatial_shapes tensors made by `spatial_shapes_tensor` (forgotten when
# the tensor goes), so that they are read without a device sync
_KNOWN_SHAPES: dict[int, list[tuple[int, int]]] = {}


def spatial_shapes_tensor(shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """The (L, 2) long tensor of the levels' (H_l, W_l) on `device` (the argument SgMg's op takes), copied without
    waiting for the device; `level_shapes` gives its Python ints back without reading the device."""
    tensor = torch.tensor(shapes, dtype=torch.long).to(device, non_blocking=True)
    _KNOWN_SHAPES[id(tensor)] = [(int(h), int(w)) for h, w in shapes]
    weakref.finalize(tensor, _KNOWN_SHAPES.pop, id(tensor), None)
    return tensor


def level_shapes(spatial_shapes: Tensor) -> list[tuple[int, int]]:
    """spatial_shapes (L, 2) long -> [(H_l, W_l), ...] as Python ints (the loops over levels need them): known
    without a device read for tensors of `spatial_shapes_tensor`."""
    known = _KNOWN_SHAPES.get(id(spatial_shapes))
    if known is not None:
        return known
    return [(int(height), int(width)) for height, width in spatial_shapes.tolist()]


def multi_scale_deformable_attention(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                                     attention_weights: Tensor) -> Tensor:
    """Weighted sum of bilinearly sampled values, per head, over every level and point.

    value: (N, S, M, Dh), S = sum_l H_l * W_l, the levels flattened one after another, row-major.
    spatial_shapes: (L, 2) long, (H_l, W_l).
    sampling_locations: (N, Lq, M, L, P, 2), (x, y) normalised to each level's map: (0, 0) its top-left
        corner, (1, 1) its bottom-right one; locations outside [0, 1] read zeros beyond the border.
    attention_weights: (N, Lq, M, L, P).
    Returns (N, Lq, M * Dh), the heads concatenated.
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, _, num_points, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)
    values_per_level = value.split([height * width for height, width in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] frame
    output = value.new_zeros(batch * heads, head_dim, num_queries)
    for level, (height, width) in enumerate(shapes):
        # (N, H*W, M, Dh) -> (N*M, Dh, H, W): every head samples its own channels
        level_value = values_per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (N*M, Dh, Lq, P)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, num_points)
        output = output + (sampled * weights).sum(-1)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()


def circle_offsets(n_heads: int, n_levels: int, n_points: int) -> Tensor:
    """Deformable DETR's initial sampling offsets (M, L, P, 2) float32, in pixels of each level.

    Head m looks along the heading 2*pi*m/M, scaled so that its longer component is 1 (the 8 neighbours
    of a pixel for M = 8); point p sits p + 1 steps out, the same on every level.
    """
    thetas = torch.arange(n_heads, dtype=torch.float64) * (2.0 * math.pi / n_heads)
    directions = torch.stack([thetas.cos(), thetas.sin()], -1)
    directions = directions / directions.abs().max(-1, keepdim=True).values
    steps = torch.arange(1, n_points + 1, dtype=torch.float64).view(1, 1, n_points, 1)
    return (directions.view(n_heads, 1, 1, 2) * steps).expand(n_heads, n_levels, n_points, 2).float()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module: queries attend to a few learned points per level."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # offsets start as the circle pattern whatever the query; weights start uniform over L * P
        nn.init.zeros_(self.sampling_offsets.weight)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(circle_offsets(self.n_heads, self.n_levels, self.n_points).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling_locations_and_weights(self, query: Tensor, reference_points: Tensor,
                                       spatial_shapes: Tensor) -> tuple[Tensor, Tensor]:
        """Where each query samples and how much each sample counts.

        query: (N, Lq, d); reference_points: (N, Lq, L, 2) points (x, y) or (N, Lq, L, 4) boxes
        (cx, cy, w, h), normalised to each level's map; spatial_shapes: (L, 2) long (H_l, W_l).
        Returns sampling locations (N, Lq, M, L, P, 2) and attention weights (N, Lq, M, L, P), softmax over L * P.
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level
            width_height = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) (W_l, H_l)
            locations = reference_points[:, :, None, :, None, :] + offsets / width_height[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are in half box sizes, the farthest point on the box's border at initialisation
            centres = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            locations = centres + offsets / points * sizes * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 (points) or 4 (boxes), got {reference_points.shape[-1]}")
        return locations, weights

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, input_padding_mask: Tensor | None = None) -> Tensor:
        """query (N, Lq, d), reference_points (N, Lq, L, 2 or 4), input_flatten (N, S, d) -> (N, Lq, d).

        spatial_shapes (L, 2) long (H_l, W_l); level_start_index (L,) long, where each level starts in S
        (the CUDA op's argument, implied by spatial_shapes here); input_padding_mask (N, S) bool,
        True on padding: those values are zeroed, so samples there read nothing.
        """
        batch, length, _ = input_flatten.shape
        if sum(height * width for height, width in level_shapes(spatial_shapes)) != length:
            raise ValueError(f"spatial_shapes {level_shapes(spatial_shapes)} do not cover the {length} inputs")
        if level_start_index.numel() != self.n_levels:
            raise ValueError(f"expected {self.n_levels} levels, got {level_start_index.numel()}")
        # locations need full precision (a bf16 offset is off by pixels on large maps): autocast off,
        # as SgMg runs the op, and the inputs in the weights' dtype
        dtype = self.value_proj.weight.dtype
        with torch.autocast(query.device.type, enabled=False):
            query, reference_points, input_flatten = (x.to(dtype) for x in (query, reference_points, input_flatten))
            value = self.value_proj(input_flatten)
            if input_padding_mask is not None:
                value = value.masked_fill(input_padding_mask[..., None], 0.0)
            value = value.view(batch, length, self.n_heads, self.d_model // self.n_heads)
            locations, weights = self.sampling_locations_and_weights(query, reference_points, spatial_shapes)
            output = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
            return self.output_proj(output)
