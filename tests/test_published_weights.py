"""Published MTTR and SgMg files: `losh convert-checkpoint` maps every tensor, `losh.load_model` loads the result,
and the model computes the reference's function stage by stage (tests/fixtures/published/README.md: the reduced
reference models, built from their public code with random weights, and their outputs)."""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import losh
from losh.cli.main import app
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config

FIXTURES = Path(__file__).parent / "fixtures" / "published"
TOLERANCE = 1e-4            # max |ours - reference| / max |reference|: float32 noise
runner = CliRunner()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-12)).item()


def unpacked(tmp_path: Path, name: str) -> Path:
    """The published-format file of the fixture, as its publisher's code saved it."""
    target = tmp_path / name.removesuffix(".gz")
    with gzip.open(FIXTURES / name, "rb") as packed, open(target, "wb") as out:
        shutil.copyfileobj(packed, out)
    return target


def heads_config(tmp_path: Path, preset: str, **overrides) -> Path:
    """The preset with the reduced models' attention heads (no tensor shape holds them)."""
    path = tmp_path / f"{preset}.json"
    path.write_text(json.dumps(with_overrides(get_config(preset), overrides).to_dict()), encoding="utf-8")
    return path


def convert(tmp_path: Path, source_format: str, source: Path, config: Path, *extra: str) -> tuple[Path, str]:
    out = tmp_path / f"{source_format}.pt"
    result = runner.invoke(app, ["convert-checkpoint", str(source), "--out", str(out), "--from", source_format,
                                 "--config", str(config), *extra])
    assert result.exit_code == 0, result.output
    return out, result.output


class Recorder:
    """Outputs of named submodules during a forward."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.outputs: dict[str, object] = {}
        for name, module in modules.items():
            module.register_forward_hook(lambda _m, _a, out, name=name: self.outputs.__setitem__(name, out))


def converted_fixture(tmp: Path, source_format: str, fixture: str, heads: int) -> tuple[torch.nn.Module, str]:
    """The fixture's file converted by the CLI and loaded by `losh.load_model`, and what the conversion printed."""
    config = heads_config(tmp, source_format, **{"transformer.nheads": heads, "text.num_heads": 2,
                                                 "transformer.dropout": 0.0})
    out, output = convert(tmp, source_format, unpacked(tmp, fixture), config)
    return losh.load_model(out), output


@pytest.fixture(scope="module")
def mttr(tmp_path_factory):
    return converted_fixture(tmp_path_factory.mktemp("mttr"), "mttr", "mttr_tiny.pth.tar.gz", heads=4)


@pytest.fixture(scope="module")
def sgmg(tmp_path_factory):
    return converted_fixture(tmp_path_factory.mktemp("sgmg"), "sgmg", "sgmg_tiny.pth.gz", heads=8)


def test_every_mttr_tensor_is_mapped_by_name(mttr):
    model, output = mttr
    assert "230 of 230 MTTR tensors mapped onto all 230 of the model's (mttr" in output
    assert model.config.backbone.embed_dim == 24 and model.config.backbone.depths[:3] == (1, 1, 2)
    assert model.config.backbone.num_heads[:3] == (1, 2, 4)      # read from the relative position tables
    assert (model.config.transformer.d_model, model.config.transformer.num_queries) == (64, 5)
    assert not model.training


def test_mttr_computes_mttrs_function_stage_by_stage(mttr):
    model, _ = mttr
    reference = torch.load(FIXTURES / "mttr_stages.pt")["runs"]["clip2_padded"]
    seen = Recorder({"backbone": model.backbone, "text_proj": model.text_proj, "video_proj": model.video_proj,
                     "encoder": model.encoder, "decoder": model.decoder, "spatial": model.spatial_decoder})
    frames = reference["input.frames"].float().transpose(0, 1)          # MTTR's (T, B) -> (B, T)
    b, t = frames.shape[:2]
    tokens = {"input_ids": reference["input.input_ids"], "attention_mask": reference["input.attention_mask"]}
    out = model.infer(frames, ["unused"] * b, annotated_index=None, padding_mask=reference["input.padding_mask"][0],
                      text_tokens=tokens, upsample=False)

    def per_frame(x: torch.Tensor) -> torch.Tensor:            # MTTR's (T B) rows -> ours, (B T)
        return x.unflatten(0, (t, b)).transpose(0, 1).flatten(0, 1)

    hw = seen.outputs["video_proj"].shape[-2] * seen.outputs["video_proj"].shape[-1]
    memory = seen.outputs["encoder"][0]                          # (B*T, hw + S, D)
    errors = {
        **{f"backbone.out{i}": relative_error(seen.outputs["backbone"][i],
                                              reference[f"backbone.out{i}"].transpose(0, 1)) for i in range(3)},
        "txt_proj": relative_error(seen.outputs["text_proj"], reference["txt_proj"].transpose(0, 1)),
        "vid_embed_proj": relative_error(seen.outputs["video_proj"], per_frame(reference["vid_embed_proj"])),
        "encoder.memory": relative_error(memory[:, :hw],
                                         per_frame(reference["encoder.memory"].transpose(0, 1))[:, :hw]),
        "decoder.hs": relative_error(seen.outputs["decoder"],
                                     reference["decoder.hs"].transpose(1, 2).unflatten(1, (t, b)).transpose(1, 2)
                                     .flatten(1, 2)),
        "spatial_decoder.out": relative_error(seen.outputs["spatial"], per_frame(reference["spatial_decoder.out"])),
        "pred_is_referred": relative_error(out["pred_is_referred"], reference["out.pred_is_referred"].transpose(0, 1)),
        "pred_masks": relative_error(out["pred_masks"], reference["out.pred_masks"].transpose(0, 1)),
        **{f"aux{i}.{k}": relative_error(out["aux_outputs"][i][k], reference[f"out.aux{i}.{k}"].transpose(0, 1))
           for i in range(2) for k in ("pred_is_referred", "pred_masks")},
    }
    assert max(errors.values()) <= TOLERANCE, errors
    # the text part of the memory: each frame's own tokens (MTTR keeps the unpadded ones)
    text_memory = per_frame(reference["encoder.memory"].transpose(0, 1))[:, hw:]
    real = (reference["input.attention_mask"] == 1).repeat_interleave(t, dim=0)
    assert relative_error(memory[:, hw:][real], text_memory[real]) <= TOLERANCE
    # the selection: MTTR's A2D post-processing, the query whose "referred" probability is highest on average
    expected = reference["out.pred_is_referred"].softmax(-1)[..., 0].mean(0).argmax(-1)
    assert torch.equal(out["best_query"], expected)


def test_every_sgmg_tensor_is_mapped_and_its_one_fusion_module_fills_four_levels(sgmg):
    model, output = sgmg
    assert "336 of 336 SgMg tensors mapped onto all 348 of the model's (sgmg" in output
    assert "4 tensors each fill 4 of the model's" in output
    fusions = {id(level.fusion) for level in model.scf}
    assert len(fusions) == 1                                     # one module, as SgMg's: trained as one
    assert model.config.sgmg.sentence_feature == "pooler" and model.config.sgmg.controller_layers == 2
    assert model.text_encoder.model.pooler is not None


@pytest.mark.parametrize("run", ["clip2_padded", "clip1_pad16"])
def test_sgmg_computes_sgmgs_function_stage_by_stage(sgmg, run):
    model, _ = sgmg
    reference = torch.load(FIXTURES / "sgmg_stages.pt")["runs"][run]
    frames, padding = reference["input.frames"].float(), reference["input.padding_mask"][:, 0]
    if run == "clip1_pad16":       # the unpadded video: our model pads it to 16 as SgMg's forward does
        height, width = reference["input.target_sizes"][0].tolist()
        frames, padding = frames[..., :height, :width], padding[..., :height, :width]
    seen = Recorder({"backbone": model.backbone, "text_proj": model.text_proj, "sentence_proj": model.sentence_proj,
                     "transformer": model.transformer,
                     **{f"input_proj{i}": model.input_proj[i] for i in range(4)},
                     **{f"scf{i}": model.scf[i] for i in range(4)}})
    tokens = {"input_ids": reference["input.input_ids"], "attention_mask": reference["input.attention_mask"]}
    b = frames.shape[0]
    out = model.infer(frames, ["unused"] * b, annotated_index=None, padding_mask=padding, text_tokens=tokens)
    height, width = frames.shape[-2:]
    errors = {
        "pred_logits": relative_error(out["pred_logits"], reference["out_a2d.pred_logits"][..., 0]),
        "pred_boxes": relative_error(out["pred_boxes"], reference["out_a2d.pred_boxes"]),
        "selected pred_masks": relative_error(out["mask_logits"],
                                              reference["out.pred_masks"][:, :, 0, :height, :width]),
    }
    if run == "clip2_padded":
        decoded = seen.outputs["transformer"]
        memory = torch.cat([level.flatten(2).transpose(1, 2) for level in decoded.memory], dim=1)
        errors.update({
            **{f"backbone.out{i}": relative_error(seen.outputs["backbone"][i].flatten(0, 1),
                                                  reference[f"backbone.out{i}"]) for i in range(4)},
            "text_proj": relative_error(seen.outputs["text_proj"], reference["text_proj"]),
            "sentence_proj": relative_error(seen.outputs["sentence_proj"], reference["sentence_proj"]),
            **{f"input_proj{i}": relative_error(seen.outputs[f"input_proj{i}"], reference[f"input_proj{i}"])
               for i in range(4)},
            **{f"input_fft_post{i}": relative_error(seen.outputs[f"scf{i}"][0], reference[f"input_fft_post{i}"])
               for i in range(4)},
            "encoder.memory": relative_error(memory, reference["encoder.memory"]),
            "transformer.hs": relative_error(decoded.hs, reference["transformer.hs"]),
            "inter_references": relative_error(decoded.inter_references, reference["transformer.inter_references"]),
            "pred_masks_low": relative_error(out["pred_masks_low"], reference["out.pred_masks_low"]),
            "pred_masks (frame 0, every query)": relative_error(out["pred_masks"][:, :1],
                                                                reference["out_a2d.pred_masks"]),
        })
    assert max(errors.values()) <= TOLERANCE, errors
    # the selection: SgMg's Refer-YouTube-VOS inference, the query whose mean sigmoid score is highest
    expected = reference["out_a2d.pred_logits"][..., 0].sigmoid().mean(1).argmax(-1)
    assert torch.equal(out["best_query"], expected)


# ----------------------------------------------------------------------------------------------- refusals


def test_another_models_file_is_refused_naming_what_it_is(tmp_path):
    mttr_file = unpacked(tmp_path, "mttr_tiny.pth.tar.gz")
    result = runner.invoke(app, ["convert-checkpoint", str(mttr_file), "--out", str(tmp_path / "x.pt"), "--from", "sgmg"])
    assert result.exit_code == 1
    assert "no SgMg state dict under 'model'" in result.output and "looks like MTTR's: --from mttr" in result.output
    assert not (tmp_path / "x.pt").exists()


def test_a_missing_or_unknown_tensor_is_refused_naming_it(tmp_path):
    source = torch.load(unpacked(tmp_path, "mttr_tiny.pth.tar.gz"))
    config = heads_config(tmp_path, "mttr", **{"transformer.nheads": 4, "text.num_heads": 2})
    state = dict(source["model_state_dict"])
    del state["transformer.decoder.norm.weight"]
    torch.save({"model_state_dict": state}, tmp_path / "missing.pth.tar")
    result = runner.invoke(app, ["convert-checkpoint", str(tmp_path / "missing.pth.tar"), "--out", str(tmp_path / "a.pt"),
                                 "--from", "mttr", "--config", str(config)])
    assert result.exit_code == 1 and "lacks 1 tensors of mttr: decoder.norm.weight" in result.output
    state = {**source["model_state_dict"], "transformer.extra_head.weight": torch.zeros(2)}
    torch.save({"model_state_dict": state}, tmp_path / "unknown.pth.tar")
    result = runner.invoke(app, ["convert-checkpoint", str(tmp_path / "unknown.pth.tar"), "--out", str(tmp_path / "b.pt"),
                                 "--from", "mttr", "--config", str(config)])
    assert result.exit_code == 1 and "tensors that MTTR does not have: transformer.extra_head.weight" in result.output


def test_a_wrong_head_count_and_a_losh_checkpoint_are_refused(tmp_path, sgmg):
    source = unpacked(tmp_path, "sgmg_tiny.pth.gz")
    # 8 heads x 4 levels x 4 points = 128 attention weights: 3 heads cannot have made them
    bad = heads_config(tmp_path, "sgmg", **{"transformer.nheads": 3, "transformer.d_model": 96})
    result = runner.invoke(app, ["convert-checkpoint", str(source), "--out", str(tmp_path / "x.pt"), "--from", "sgmg",
                                 "--config", str(bad)])
    assert result.exit_code == 1 and "not a multiple of 3 heads x 4 levels" in result.output
    losh_file = tmp_path / "ours.pt"
    torch.save({"schema": "losh.checkpoint", "version": 1}, losh_file)
    result = runner.invoke(app, ["convert-checkpoint", str(losh_file), "--out", str(tmp_path / "y.pt"), "--from", "sgmg"])
    assert result.exit_code == 1 and "already a losh.checkpoint checkpoint" in result.output


def test_sgmg_files_keep_their_options_and_counters_which_are_read_and_dropped(tmp_path):
    """SgMg saves its argparse options beside the weights, and thop and old transformers leave counters and
    position ids in the state dict: the options are admitted by name, the rest dropped on the named list."""
    content = torch.load(unpacked(tmp_path, "sgmg_tiny.pth.gz"), weights_only=False)
    assert isinstance(content["args"], argparse.Namespace)
    state = dict(content["model"])
    state["text_encoder.text_backbone.embeddings.position_ids"] = torch.arange(34)[None]
    state["backbone.0.body.total_ops"] = torch.zeros(1, dtype=torch.float64)
    state["backbone.0.body.total_params"] = torch.zeros(1, dtype=torch.float64)
    torch.save({**content, "model": state}, tmp_path / "sgmg_thop.pth")
    config = heads_config(tmp_path, "sgmg", **{"transformer.nheads": 8, "text.num_heads": 2})
    out, output = convert(tmp_path, "sgmg", tmp_path / "sgmg_thop.pth", config, "--trained-on", "a2d")
    assert "336 of 339 SgMg tensors mapped" in output
    assert "dropped 1: RoBERTa's position ids" in output and "dropped 1: a FLOP counter thop" in output
    checkpoint = torch.load(out)
    assert checkpoint["converted_from"]["format"] == "sgmg" and len(checkpoint["converted_from"]["sha256"]) == 64
    assert checkpoint["data_preparation"]["resolution"] == {"short_side": 360, "max_long_side": 640}
    assert checkpoint["model_config"]["window"] == 5
    # an existing OUT is kept unless --overwrite
    result = runner.invoke(app, ["convert-checkpoint", str(tmp_path / "sgmg_thop.pth"), "--out", str(out), "--from", "sgmg",
                                 "--config", str(config)])
    assert result.exit_code == 1 and "pass --overwrite" in result.output


def test_an_official_losh_file_has_mttrs_names_and_loads_into_the_official_preset(tmp_path, mttr):
    """The official LoSh code (MTTR-based) adds no parameter to MTTR's: its files convert by MTTR's names into
    `losh-m:official` (3 encoder layers, no long-short cross-attention), whose long pathway is then MTTR's."""
    config = heads_config(tmp_path, "losh-m:official", **{"transformer.nheads": 4, "text.num_heads": 2,
                                                          "transformer.dropout": 0.0})
    out, output = convert(tmp_path, "losh-official", unpacked(tmp_path, "mttr_tiny.pth.tar.gz"), config)
    assert "230 of 230 official LoSh tensors mapped onto all 230" in output
    official, (reference_model, _) = losh.load_model(out), mttr
    assert official.config.use_short_text and official.config.transformer.cross_attention == "none"
    frames = torch.randn(1, 4, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = official.infer(frames, ["a man"], ["man"], annotated_index=None)
        theirs = reference_model.infer(frames, ["a man"], annotated_index=None)
    assert torch.allclose(ours["mask_logits"], theirs["mask_logits"], atol=1e-5)
