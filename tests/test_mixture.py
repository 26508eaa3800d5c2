"""`losh train --data a,b`: several prepared sets trained on as one (SgMg's RefCOCO/+/g concatenation): every
sample of each once an epoch, the first set validating; sets with different short texts refused."""
from __future__ import annotations

import json
import shutil

import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.data.dataset import RVOSDataset
from losh.data.mixture import MixtureDataset, parse_data_list
from losh.pipeline.prepare import PrepareSettings, prepare_a2d


def test_the_mixture_holds_every_sample_of_each_set_once(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    parts = [RVOSDataset(prepared, "train"), RVOSDataset(copy, "train")]
    mixture = MixtureDataset(parts)
    assert len(mixture) == 2 * len(parts[0])
    first, second = mixture[0], mixture[len(parts[0])]
    assert first["sample_id"] == second["sample_id"] and torch.equal(first["frames"], second["frames"])
    assert mixture.texts == {t for r in parts[0].data.records for t in (r.long, r.short)}
    assert parse_data_list("a, b,c") == ["a", "b", "c"]


def test_cli_trains_on_two_sets_and_refuses_mixed_short_texts(prepared, synth_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", f"{prepared},{copy}", "--out", str(run), "--config",
                                      "tiny:wo-fbc", "--epochs", "1", "--batch-size", "4", "--workers", "0",
                                      "--amp", "off"])
    assert result.exit_code == 0, result.output
    samples = json.loads((prepared / "manifest.json").read_text())["counts"]["samples_train"]
    assert f"trained {-(-2 * samples // 4)} steps" in result.output
    machine = tmp_path / "machine"
    prepare_a2d(synth_root, machine, short_source="machine", settings=PrepareSettings(window=8, short_side=64,
                max_long_side=88), workers=1, progress=False)
    result = CliRunner().invoke(app, ["train", "--data", f"{prepared},{machine}", "--out", str(tmp_path / "no"),
                                      "--config", "tiny:wo-fbc", "--max-steps", "1", "--workers", "0"])
    assert result.exit_code == 1 and "different short texts" in result.output and not (tmp_path / "no").exists()
