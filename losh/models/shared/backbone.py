"""Visual encoder: Video Swin (torchvision's SwinTransformer3d; Swin-T, or Swin-B for LoSh-S) adapted the way
MTTR and SgMg adapt it.

- temporal patch size 1 instead of 2, so every input frame keeps its own feature maps;
- window (8, 7, 7), stochastic depth 0.1 spread over the blocks of the full 4-stage model;
- the window attention through `scaled_dot_product_attention` (`window_attention.py`: torchvision's function and
  parameters, a fused kernel on the GPU);
- `backbone.num_stages` 3 (MTTR, LoSh-M): the 4th stage (and the patch merging before it) is dropped,
  outputs at strides 4, 8 and 16; 4 (SgMg, LoSh-S): strides 4, 8, 16 and 32. Outputs are taken after each
  stage and before its patch merging (no final norm), per frame.

Kinetics-400 weights come from a local file, either torchvision's `Swin3D_T_Weights.KINETICS400_V1` /
`Swin3D_B_Weights.KINETICS400_V1` state dict (`swin3d_t-7615ae03.pth`, `swin3d_b_1k-24f7c7c6.pth`) or the
official Video Swin checkpoint (`swin_tiny_patch244_window877_kinetics400_1k.pth`, keys under `state_dict` /
`backbone.`); the patch-embedding kernel (2, 4, 4) is summed over its temporal axis to (1, 4, 4).
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformerBlock
from torchvision.models.video.swin_transformer import SwinTransformer3d

from losh.errors import WeightsMissing
from losh.models.shared.window_attention import SDPAShiftedWindowAttention3d
from losh.schemas.config import BackboneConfig
from losh.schemas.torch_files import safe_torch_load

_HOW_TO_GET_WEIGHTS = (
    "Provide Kinetics-400 Video Swin weights of the config's variant as a local file and set backbone.weights to "
    "its path, either\n"
    "  - torchvision's Swin3D_T_Weights.KINETICS400_V1: https://download.pytorch.org/models/swin3d_t-7615ae03.pth "
    "(Swin-B: Swin3D_B_Weights.KINETICS400_V1, https://download.pytorch.org/models/swin3d_b_1k-24f7c7c6.pth), or\n"
    "  - the official Video Swin checkpoint swin_tiny_patch244_window877_kinetics400_1k.pth "
    "(Swin-B: swin_base_patch244_window877_kinetics400_1k.pth; github.com/SwinTransformer/Video-Swin-Transformer),\n"
    "downloaded on a machine with internet and copied here. To train from scratch instead (not the paper "
    "setting), set backbone.require_weights = false."
)


class VideoSwinBackbone(nn.Module):
    """frames (B, T, 3, H, W) -> per-frame features [(B, T, C_i, H/s_i, W/s_i)] for s_i = 4, 8, 16 (and 32 with
    4 stages)."""

    def __init__(self, config: BackboneConfig, load_pretrained: bool = True) -> None:
        """`load_pretrained=False`: the weights will come from a checkpoint of this model (evaluation,
        resume), so the Kinetics-400 file the run started from is neither read nor required."""
        super().__init__()
        swin = SwinTransformer3d(
            patch_size=list(config.patch_size), embed_dim=config.embed_dim, depths=list(config.depths),
            num_heads=list(config.num_heads), window_size=list(config.window_size),
            stochastic_depth_prob=config.stochastic_depth, num_classes=1,
            # the same function and parameters, the attention through scaled_dot_product_attention
            block=partial(SwinTransformerBlock, attn_layer=SDPAShiftedWindowAttention3d),
        )
        # features = [stage0, merge0, stage1, merge1, stage2, merge2, stage3]: keep num_stages of them
        stages = config.num_stages
        self.num_stages = stages
        self.patch_embed = swin.patch_embed
        self.pos_drop = swin.pos_drop
        self.stages = nn.ModuleList([swin.features[2 * i] for i in range(stages)])
        self.downsamples = nn.ModuleList([swin.features[2 * i + 1] for i in range(stages - 1)])
        self.out_channels = [config.embed_dim * 2 ** i for i in range(stages)]
        spatial_patch = config.patch_size[1]
        self.strides = [spatial_patch * 2 ** i for i in range(stages)]
        if not load_pretrained:
            pass
        elif config.weights is not None:
            self.load_kinetics_weights(config.weights)
        elif config.require_weights:
            raise WeightsMissing("this config needs pretrained Video Swin weights (backbone.weights is "
                                 "not set).\n" + _HOW_TO_GET_WEIGHTS)
        if not config.trainable:
            for parameter in self.parameters():
                parameter.requires_grad_(False)

    def forward(self, frames: Tensor) -> list[Tensor]:
        x = self.patch_embed(frames.permute(0, 2, 1, 3, 4))  # (B, T, h, w, C)
        x = self.pos_drop(x)
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            outputs.append(x.permute(0, 1, 4, 2, 3))  # (B, T, C, h, w)
            if index < len(self.downsamples):
                x = self.downsamples[index](x)
        return outputs

    def load_kinetics_weights(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise WeightsMissing(f"backbone weights file not found: {path}\n" + _HOW_TO_GET_WEIGHTS)
        checkpoint = safe_torch_load(path, what="weights file")   # refused if it would run code (UnsafeFile)
        state = convert_swin_state_dict(checkpoint, self.num_stages)
        own = self.state_dict()
        kernel = state.get("patch_embed.proj.weight")
        if kernel is not None and kernel.shape[2] != own["patch_embed.proj.weight"].shape[2]:
            state["patch_embed.proj.weight"] = kernel.sum(dim=2, keepdim=True)
        # relative_position_index is a fixed buffer computed from the window size: keep ours
        state = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as error:  # tensor shapes of another architecture
            raise WeightsMissing(f"{path} does not hold Video Swin weights of this architecture ({error})\n"
                                 + _HOW_TO_GET_WEIGHTS) from None
        missing = [k for k in missing if not k.endswith("relative_position_index")]
        if missing or unexpected:
            raise WeightsMissing(f"{path} does not hold Video Swin weights of this architecture: "
                                 f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                                 f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}\n" + _HOW_TO_GET_WEIGHTS)


def convert_swin_state_dict(checkpoint: dict, num_stages: int = 3) -> dict[str, Tensor]:
    """Our key names (patch_embed, stages.i, downsamples.i) from a torchvision or official state dict.

    Parts we do not build (the stages past `num_stages`, final norm, classification head) are dropped.
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict):
        raise WeightsMissing("the backbone weights file holds no state dict\n" + _HOW_TO_GET_WEIGHTS)
    if any(k.startswith("backbone.") for k in state):  # official (mmaction) checkpoint
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        new_key = _convert_key(key, num_stages)
        if new_key is not None:
            converted[new_key] = value
    return converted


def _convert_key(key: str, num_stages: int) -> str | None:
    if key.startswith("patch_embed."):
        return key
    match = re.match(r"features\.(\d+)\.(.*)", key)  # torchvision
    if match:
        index, rest = int(match.group(1)), match.group(2)
        if index % 2 == 0 and index // 2 < num_stages:
            return f"stages.{index // 2}.{rest}"
        if index % 2 == 1 and index // 2 < num_stages - 1:
            return f"downsamples.{index // 2}.{rest}"
        return None
    match = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)", key)  # official Video Swin
    if match:
        stage, block, rest = int(match.group(1)), match.group(2), match.group(3)
        if stage >= num_stages:
            return None
        rest = rest.replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
        return f"stages.{stage}.{block}.{rest}"
    match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    if match:
        stage = int(match.group(1))
        return f"downsamples.{stage}.{match.group(2)}" if stage < num_stages - 1 else None
    return None
