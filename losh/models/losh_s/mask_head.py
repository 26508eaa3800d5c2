"""SgMg's mask generation: per-query dynamic convolutions with relative coordinates, and MSO.

Each decoded query predicts the parameters of a small stack of 1x1 convolutions (CondInst-style)
that runs over the stride-8 mask features concatenated with the coordinates of every pixel relative
to the query's reference point. The last layer has 16 channels: a 4x4 sub-pixel patch per stride-8
pixel, so pixel_shuffle(4) gives stride-2 masks ('pred_masks_low'). Multi-granularity refinement
(MSO) instead refines the 16 channels with the backbone's stride-8 and stride-4 features, and its
output, pixel-shuffled by 4, is at full input resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losh.models.shared.layers import MLP

MASK_FEATURE_STRIDE = 8   # mask features live on the first (stride 8) memory level
SUBPIXEL_FACTOR = 4       # 16 output channels = a 4 x 4 patch


def mask_features_from_memory(memory_levels: list[Tensor]) -> Tensor:
    """[(N, C, h_l, w_l), ...] finest (stride 8) first -> (N, C, h0, w0): the levels summed after
    bicubic resizing to the first level's size (SgMg)."""
    size = memory_levels[0].shape[-2:]
    return sum(F.interpolate(level, size=size, mode="bicubic", align_corners=False) for level in memory_levels)


def compute_locations(height: int, width: int, stride: int, device: torch.device | None = None) -> Tensor:
    """Input-pixel (x, y) of the centres of a stride-`stride` grid, row-major -> (height * width, 2).

    SgMg/CondInst place cell (i, j) at (stride * j + stride // 2, stride * i + stride // 2).
    """
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1) + stride // 2


def relative_coordinates(reference_points: Tensor, input_size: tuple[int, int] | Tensor,
                         height: int, width: int, stride: int = MASK_FEATURE_STRIDE) -> Tensor:
    """reference_points (B, T, Q, 2) normalised (cx, cy); input_size (H, W) or (B, 2) per clip
    -> (B, T, Q, 2, height, width): reference point minus grid location, (x, y), in input pixels.

    Not normalised (no division by a size of interest as in CondInst/ReferFormer): SgMg feeds raw
    pixel offsets, so they reach hundreds on typical inputs.
    """
    b, t, q, _ = reference_points.shape
    size = torch.as_tensor(input_size, dtype=reference_points.dtype, device=reference_points.device)
    scale = size.flip(-1).reshape(-1, 1, 1, 2)  # (W, H): (1, 1, 1, 2) shared or (B, 1, 1, 2) per clip
    reference_px = reference_points * scale
    locations = compute_locations(height, width, stride, reference_points.device).to(reference_points.dtype)
    offsets = reference_px.reshape(b, t, q, 1, 2) - locations.reshape(1, 1, 1, height * width, 2)
    return offsets.permute(0, 1, 2, 4, 3).reshape(b, t, q, 2, height, width)


def parse_dynamic_params(params: Tensor, weight_nums: list[int], bias_nums: list[int],
                         channels: int) -> tuple[list[Tensor], list[Tensor]]:
    """params (N, P) of N instances -> per layer weights (N * channels, C_in, 1, 1) and biases
    (N * channels), laid out for a convolution grouped by instance (SgMg's parse_dynamic_params).

    Each instance's row holds all layers' weights (output-channel major), then all biases.
    """
    if params.shape[1] != sum(weight_nums) + sum(bias_nums):
        raise ValueError(f"expected {sum(weight_nums) + sum(bias_nums)} parameters, got {params.shape[1]}")
    n, layers = params.shape[0], len(weight_nums)
    splits = torch.split(params, weight_nums + bias_nums, dim=1)
    weights = [split.reshape(n * channels, -1, 1, 1) for split in splits[:layers]]
    biases = [split.reshape(n * channels) for split in splits[layers:]]
    return weights, biases


def dynamic_convolution(features: Tensor, weights: list[Tensor], biases: list[Tensor], num_instances: int) -> Tensor:
    """features (1, N * C_in, h, w) -> (1, N * channels, h, w): every instance's 1x1 convolutions,
    ReLU between layers, in one grouped convolution per layer."""
    x = features
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        x = F.conv2d(x, weight, bias=bias, groups=num_instances)
        if index < len(weights) - 1:
            x = F.relu(x)
    return x


class DynamicMaskHead(nn.Module):
    """SgMg's controller and dynamic mask convolutions.

    in_channels: channels of the mask features (SgMg: its mask_dim = the transformer's d_model, 256,
    since the mask features are the summed encoder memory). controller_layers: SgMg's default 2.
    dynamic_channels: hidden and output channels, 16 so the output is a 4x4 sub-pixel patch.
    """

    def __init__(self, d_model: int, in_channels: int, controller_layers: int = 2, dynamic_channels: int = 16,
                 relative_coords: bool = True) -> None:
        super().__init__()
        if dynamic_channels != SUBPIXEL_FACTOR ** 2:
            raise ValueError(f"the last dynamic layer is a {SUBPIXEL_FACTOR}x{SUBPIXEL_FACTOR} patch: "
                             f"dynamic_channels must be {SUBPIXEL_FACTOR ** 2}, got {dynamic_channels}")
        self.dynamic_channels = dynamic_channels
        self.relative_coords = relative_coords
        first_in = in_channels + 2 if relative_coords else in_channels
        self.weight_nums = [first_in * dynamic_channels] + [dynamic_channels ** 2] * (controller_layers - 1)
        self.bias_nums = [dynamic_channels] * controller_layers
        self.controller = MLP(d_model, d_model, sum(self.weight_nums) + sum(self.bias_nums), 3)
        for layer in self.controller.layers:
            nn.init.zeros_(layer.bias)
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, queries: Tensor, mask_features: Tensor, reference_points: Tensor,
                input_size: tuple[int, int] | Tensor) -> Tensor:
        """queries (B, T, Q, d); mask_features (B, T, C, h8, w8); reference_points (B, T, Q, 2)
        normalised (cx, cy); input_size (H, W) of the model's input, or (B, 2) per clip
        -> patch logits (B, T, Q, 16, h8, w8)."""
        b, t, q, _ = queries.shape
        h, w = mask_features.shape[-2:]
        features = mask_features[:, :, None].expand(b, t, q, *mask_features.shape[2:])
        if self.relative_coords:
            offsets = relative_coordinates(reference_points, input_size, h, w).to(features.dtype)
            features = torch.cat([features, offsets], dim=3)
        num_instances = b * t * q
        weights, biases = parse_dynamic_params(self.controller(queries).reshape(num_instances, -1),
                                               self.weight_nums, self.bias_nums, self.dynamic_channels)
        logits = dynamic_convolution(features.reshape(1, -1, h, w), weights, biases, num_instances)
        return logits.reshape(b, t, q, self.dynamic_channels, h, w)


def to_fine_masks(patches: Tensor) -> Tensor:
    """(..., 16, h, w) -> (..., 4h, 4w): channel k becomes sub-pixel (k // 4, k % 4) (pixel_shuffle)."""
    return F.pixel_shuffle(patches, SUBPIXEL_FACTOR).squeeze(-3)


class MultiGranularityRefinement(nn.Module):
    """SgMg's MSO: residual refinement of the 16-channel patches with stride-8, then stride-4 image features.

    image_dims: (channels at stride 4, channels at stride 8) of the backbone. SgMg applies a ReLU before
    each convolution, also to the concatenated input. Names match SgMg's state dict.
    """

    def __init__(self, image_dims: tuple[int, int], mask_dim: int = SUBPIXEL_FACTOR ** 2) -> None:
        super().__init__()
        stride4_dim, stride8_dim = image_dims
        self.conv1_1div8 = nn.Conv2d(mask_dim + stride8_dim, mask_dim, kernel_size=3, padding=1)
        self.conv2_1div8 = nn.Conv2d(mask_dim, mask_dim, kernel_size=3, padding=1)
        self.conv1_1div4 = nn.Conv2d(mask_dim + stride4_dim, mask_dim, kernel_size=3, padding=1)
        self.conv2_1div4 = nn.Conv2d(mask_dim, mask_dim, kernel_size=3, padding=1)

    def forward(self, patches: Tensor, stride4_features: Tensor, stride8_features: Tensor) -> Tensor:
        """patches (N, 16, h8, w8); stride4_features (N, C4, h4, w4); stride8_features (N, C8, h8, w8)
        -> (N, 16, h4, w4), which pixel_shuffle(4) (to_fine_masks) brings to the input resolution."""
        if patches.shape[-2:] != stride8_features.shape[-2:]:
            raise ValueError(f"patches {tuple(patches.shape)} and stride-8 features "
                             f"{tuple(stride8_features.shape)} differ in size")
        x = torch.cat([patches, stride8_features], dim=1)
        patches = patches + self.conv2_1div8(F.relu(self.conv1_1div8(F.relu(x))))
        patches = F.interpolate(patches, size=stride4_features.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([patches, stride4_features], dim=1)
        return patches + self.conv2_1div4(F.relu(self.conv1_1div4(F.relu(x))))
