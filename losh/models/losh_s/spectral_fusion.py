"""SgMg's spectrum-guided cross-modal fusion (SCF).

At every feature level the projected visual map is modulated in the frequency domain, fused with
the words (visual tokens attend to the words, and the attended text multiplies the visual tokens),
and modulated again. The Gaussian filter of the first modulation is resized and reused by all later
ones, so every level is filtered at the same relative frequencies.

Submodule names inside FrequencyModulation and VisionLanguageFusion are those of SgMg
(models/modules.py LFMResizeAdaptive, models/segmentation.py VisionLanguageFusionModule), so its
checkpoints load with a prefix remapping only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gaussian_filter(height: int, width: int, sigma: float, device: torch.device | None = None) -> Tensor:
    """exp(-d^2 / (2 sigma^2)) of the distance d to (height // 2, width // 2) -> (1, 1, height, width)."""
    rows = torch.arange(height, dtype=torch.float32, device=device)[:, None]
    cols = torch.arange(width, dtype=torch.float32, device=device)[None, :]
    squared = (rows - height // 2) ** 2 + (cols - width // 2) ** 2
    return torch.exp(-squared / (2 * sigma ** 2))[None, None]


class FrequencyModulation(nn.Module):
    """SgMg's LFMResizeAdaptive: an adaptive, learned filter of the feature map's 2D spectrum.

    The spectrum is fft2's, unshifted: its zero frequency sits at (0, 0) and its highest ones near
    (h // 2, w // 2). The Gaussian centred there therefore suppresses the HIGHEST frequencies (the
    paper calls it a low-pass step) by a strength in (0, 1) predicted from the features; two 1x1
    convolutions then mix the real and imaginary parts, and the inverse transform is added back.
    """

    def __init__(self, channels: int, sigma: float = 7.0) -> None:
        super().__init__()
        self.sigma = sigma
        # strength of the filter: 3x3 conv (no padding), global average pool, Linear-ReLU-Linear-Sigmoid
        self.laplace = nn.Conv2d(channels, channels, kernel_size=3, padding=0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels, 1, bias=False),
            nn.Sigmoid(),
        )
        # spectrum mixing over [real, imag]
        self.conv1 = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.conv2 = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)

    def strength(self, x: Tensor) -> Tensor:
        """x (N, C, h, w) -> filter strength (N, 1, 1, 1) in (0, 1)."""
        n, c, h, w = x.shape
        if h < 3 or w < 3:
            # SgMg's unpadded 3x3 conv needs 3 x 3 maps; smaller ones (tiny inputs' coarsest levels)
            # are edge-padded just enough, which only touches maps on which SgMg would fail.
            pad_h, pad_w = max(0, 3 - h), max(0, 3 - w)
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")
        return self.fc(self.pool(self.laplace(x)).view(n, c)).view(n, 1, 1, 1)

    def forward(self, x: Tensor, previous_filter: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (N, C, h, w); previous_filter (1, 1, h', w') of an earlier modulation, or None.

        Returns (x + modulated (N, C, h, w) float32, the filter used (1, 1, h, w)). Runs in float32
        even under autocast: half-precision FFTs are limited to power-of-two sizes and lose accuracy.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            h, w = x.shape[-2:]
            if previous_filter is None:
                high_filter = gaussian_filter(h, w, self.sigma, device=x.device)
            else:
                high_filter = F.interpolate(previous_filter.float(), size=(h, w), mode="bilinear",
                                            align_corners=False)
            spectrum = torch.fft.fft2(x) * (1 - self.strength(x) * high_filter)
            mixed = self.conv2(F.relu(self.conv1(torch.cat([spectrum.real, spectrum.imag], dim=1))))
            real, imag = torch.chunk(mixed, 2, dim=1)
            modulated = torch.fft.ifft2(torch.complex(real, imag), s=(h, w)).real
            return x + modulated, high_filter


class VisionLanguageFusion(nn.Module):
    """SgMg's VisionLanguageFusionModule: visual tokens attend to the words; the result gates them.

    Unlike a residual cross-attention, the output is the element-wise product visual * attended.
    """

    def __init__(self, d_model: int, nheads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)

    def forward(self, visual: Tensor, words: Tensor, word_padding: Tensor | None = None,
                word_pos: Tensor | None = None, visual_pos: Tensor | None = None) -> Tensor:
        """visual (B, L, C) tokens; words (B, S, C); word_padding (B, S) True on padding;
        word_pos (B, S, C) and visual_pos (B, L, C) or None -> (B, L, C)."""
        query = visual if visual_pos is None else visual + visual_pos
        key = words if word_pos is None else words + word_pos
        attended = self.multihead_attn(query=query, key=key, value=words, key_padding_mask=word_padding,
                                       need_weights=False)[0]
        return visual * attended


class SpectrumGuidedFusion(nn.Module):
    """One level of SCF: frequency modulation, vision-language fusion, frequency modulation.

    SgMg shares a single fusion module across levels (and has two modulations per level): build one
    VisionLanguageFusion and pass it to every level's SpectrumGuidedFusion.
    """

    def __init__(self, channels: int, fusion: VisionLanguageFusion, sigma: float = 7.0) -> None:
        super().__init__()
        self.pre_modulation = FrequencyModulation(channels, sigma)
        self.fusion = fusion
        self.post_modulation = FrequencyModulation(channels, sigma)

    def forward(self, visual: Tensor, words: Tensor, word_padding: Tensor | None, word_pos: Tensor | None,
                frames_per_clip: int, previous_filter: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """visual (B*T, C, h, w), clip-major; words (B, S, C); word_padding (B, S); word_pos (B, S, C) or None.

        Returns (fused (B*T, C, h, w) float32, filter (1, 1, h, w)) - the filter goes to the next level.
        """
        visual, high_filter = self.pre_modulation(visual, previous_filter)
        tokens = clip_tokens(visual, frames_per_clip)
        tokens = self.fusion(tokens, words.to(tokens.dtype), word_padding,
                             None if word_pos is None else word_pos.to(tokens.dtype))
        visual = frames_from_clip_tokens(tokens, frames_per_clip, *visual.shape[-2:])
        return self.post_modulation(visual, high_filter)


def clip_tokens(visual: Tensor, frames_per_clip: int) -> Tensor:
    """(B*T, C, h, w) -> (B, T*h*w, C): the tokens of all frames of a clip in one sequence."""
    bt, c, h, w = visual.shape
    if bt % frames_per_clip:
        raise ValueError(f"{bt} frames do not split into clips of {frames_per_clip}")
    return visual.view(bt // frames_per_clip, frames_per_clip, c, h * w).permute(0, 1, 3, 2).reshape(
        bt // frames_per_clip, frames_per_clip * h * w, c)


def frames_from_clip_tokens(tokens: Tensor, frames_per_clip: int, height: int, width: int) -> Tensor:
    """(B, T*h*w, C) -> (B*T, C, h, w), the inverse of clip_tokens."""
    b, _, c = tokens.shape
    return tokens.view(b, frames_per_clip, height * width, c).permute(0, 1, 3, 2).reshape(
        b * frames_per_clip, c, height, width)
