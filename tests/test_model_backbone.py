"""The Video Swin backbone as MTTR adapts it, and loading Kinetics-400 weights from local files."""
import re

import pytest
import torch
from torchvision.models.video.swin_transformer import SwinTransformer3d

from losh.errors import WeightsMissing
from losh.models.registry import build_model
from losh.models.shared.backbone import VideoSwinBackbone
from losh.schemas.config import BackboneConfig, with_overrides
from losh.schemas.presets import get_config

TINY = get_config("tiny").backbone


def test_per_frame_features_at_strides_4_8_16():
    backbone = VideoSwinBackbone(TINY).eval()
    frames = torch.randn(1, 3, 3, 50, 70)
    outputs = backbone(frames)
    # patch embedding pads 50x70 to 52x72; patch merging pads odd sizes
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 24, 13, 18), (1, 3, 48, 7, 9), (1, 3, 96, 4, 5)]
    assert backbone.strides == [4, 8, 16] and backbone.out_channels == [24, 48, 96]
    assert len(backbone.stages) == 3 and len(backbone.downsamples) == 2  # 4th stage dropped
    # a temporal patch of 1 keeps frames apart: changing frame 2 leaves the patch embedding of frame 0
    changed = frames.clone()
    changed[:, 2] += 1
    embed = backbone.patch_embed(frames.permute(0, 2, 1, 3, 4))
    assert torch.equal(embed[:, 0], backbone.patch_embed(changed.permute(0, 2, 1, 3, 4))[:, 0])


def test_stochastic_depth_follows_the_full_four_stage_schedule():
    config = get_config("losh-m").backbone
    backbone = VideoSwinBackbone(BackboneConfig(**{**config.__dict__, "require_weights": False}))
    blocks = [block for stage in backbone.stages for block in stage]
    assert len(blocks) == 10
    # linear from 0 to 0.1 over the 12 blocks of Swin-T (MTTR drops the last 2 with the 4th stage)
    assert [b.stochastic_depth.p for b in blocks] == pytest.approx([0.1 * i / 11 for i in range(10)])
    assert backbone.stages[0][0].attn.window_size == [8, 7, 7]


def _torchvision_swin():
    torch.manual_seed(0)
    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=24, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
                             window_size=[8, 7, 7], num_classes=400)


def _official_key(key):
    match = re.match(r"features\.(\d+)\.(.*)", key)
    if match is None:
        return "cls_head.fc_cls." + key.split(".")[-1] if key.startswith("head.") else "backbone." + key
    index, rest = int(match.group(1)), match.group(2)
    if index % 2:
        return f"backbone.layers.{index // 2}.downsample.{rest}"
    block, rest = rest.split(".", 1)
    rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
    return f"backbone.layers.{index // 2}.blocks.{block}.{rest}"


@pytest.mark.parametrize("layout", ["torchvision", "official"])
def test_loads_kinetics_weights_and_sums_the_patch_kernel_over_time(tmp_path, layout):
    source = _torchvision_swin()
    state = source.state_dict()
    if layout == "official":
        state = {"state_dict": {_official_key(k): v for k, v in state.items()}, "meta": {"epoch": 30}}
    path = tmp_path / "swin.pth"
    torch.save(state, path)
    backbone = VideoSwinBackbone(BackboneConfig(**{**TINY.__dict__, "weights": str(path)}))
    kernel = source.patch_embed.proj.weight
    assert kernel.shape[2] == 2
    assert torch.allclose(backbone.patch_embed.proj.weight, kernel.sum(dim=2, keepdim=True))
    assert torch.equal(backbone.stages[2][1].mlp[3].weight, source.features[4][1].mlp[3].weight)
    assert torch.equal(backbone.stages[1][0].attn.relative_position_bias_table,
                       source.features[2][0].attn.relative_position_bias_table)
    assert torch.equal(backbone.downsamples[1].reduction.weight, source.features[3].reduction.weight)


def test_missing_or_wrong_weights_say_what_to_provide(tmp_path):
    with pytest.raises(WeightsMissing, match="backbone.weights"):
        VideoSwinBackbone(BackboneConfig(**{**TINY.__dict__, "require_weights": True}))
    with pytest.raises(WeightsMissing, match="not found: .*nowhere.pth"):
        VideoSwinBackbone(BackboneConfig(**{**TINY.__dict__, "weights": str(tmp_path / "nowhere.pth")}))
    other = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
                              window_size=[8, 7, 7])
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsMissing, match="architecture"):
        VideoSwinBackbone(BackboneConfig(**{**TINY.__dict__, "weights": str(tmp_path / "other.pth")}))
    # the paper preset refuses to build without weights, naming the files to provide
    with pytest.raises(WeightsMissing, match="swin3d_t-7615ae03.pth"):
        build_model(get_config("losh-m"))
    assert with_overrides(get_config("losh-m"), {"backbone.weights": "k400.pth"}).backbone.weights == "k400.pth"
