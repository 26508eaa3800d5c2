"""`losh train --init-from`: a new run from another checkpoint's weights, with the loaded / new / ignored lists."""
import json

import pytest
import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.models.registry import build_model
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.checkpoint import load_checkpoint
from losh.training.init_from import InitMismatch, initialise_from
from losh.training.loop import train

runner = CliRunner()


@pytest.fixture(scope="module")
def baseline_checkpoint(prepared, tmp_path_factory):
    """An MTTR-like run (3 encoder layers, no long-short cross-attention), one step."""
    run = tmp_path_factory.mktemp("baseline") / "run"
    train(prepared, get_config("tiny:baseline"), run, TrainSettings(epochs=1, batch_size=2, num_workers=0,
                                                                     amp="off", max_steps=1), progress=False)
    return run / "checkpoints" / "last.pt"


def test_a_losh_model_starts_from_a_baselines_weights_and_its_own_parts_start_fresh(baseline_checkpoint):
    source = load_checkpoint(baseline_checkpoint)["model"]
    torch.manual_seed(0)
    model = build_model(get_config("tiny:wo-fbc"), load_pretrained=False)    # 4 encoder layers, CA
    fresh = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    report = initialise_from(model, baseline_checkpoint)
    state = model.state_dict()
    assert report.ignored == []                             # everything the baseline has, LoSh-M has
    assert set(report.loaded) == {k for k, v in source.items() if isinstance(v, torch.Tensor)}
    assert all(torch.equal(state[k], source[k]) for k in report.loaded)
    assert report.new and all(k.startswith(("encoder.layers.3.", "encoder.long_cross.")) for k in report.new)
    assert all(torch.equal(state[k], fresh[k]) for k in report.new)
    # the text encoder's trained tokenizer comes with its weights
    assert model.text_encoder.get_extra_state() == source["text_encoder._extra_state"]


def test_init_parts_load_only_those_parts(baseline_checkpoint):
    model = build_model(get_config("tiny:baseline"), load_pretrained=False)
    report = initialise_from(model, baseline_checkpoint, parts=["backbone", "text_proj"])
    assert report.loaded and all(k.startswith(("backbone.", "text_proj.")) for k in report.loaded)
    assert all(not k.startswith(("backbone.", "text_proj.")) for k in report.new + report.ignored)
    assert len(report.loaded) + len(report.ignored) == len(
        [v for v in load_checkpoint(baseline_checkpoint)["model"].values() if isinstance(v, torch.Tensor)])
    with pytest.raises(ValueError, match="--init-parts backbones: .* has no tensor under that name"):
        initialise_from(model, baseline_checkpoint, parts=["backbones"])


def test_a_tensor_of_another_shape_is_refused_by_name(baseline_checkpoint):
    model = build_model(with_overrides(get_config("tiny:baseline"), {"transformer.num_queries": 7}),
                        load_pretrained=False)
    with pytest.raises(InitMismatch, match=r"decoder.queries.weight has shape \(5, 64\) there and \(7, 64\)"):
        initialise_from(model, baseline_checkpoint)


def test_train_init_from_writes_the_three_lists_and_says_the_counts(prepared, baseline_checkpoint, tmp_path):
    run = tmp_path / "losh"
    result = runner.invoke(app, ["train", "--data", str(prepared), "--out", str(run), "--config", "tiny:wo-fbc",
                                 "--epochs", "1", "--max-steps", "1", "--batch-size", "2", "--workers", "0",
                                 "--amp", "off", "--init-from", str(baseline_checkpoint)])
    assert result.exit_code == 0, result.output
    lists = json.loads((run / "init-from.json").read_text())
    assert set(lists) == {"checkpoint", "parts", "loaded", "new", "ignored"}
    line = (f"{len(lists['loaded'])} tensors loaded, {len(lists['new'])} newly initialised, "
            "0 of the checkpoint's ignored")
    assert line in result.output
    # only some parts
    result = runner.invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "parts"), "--config",
                                 "tiny:wo-fbc", "--max-steps", "1", "--workers", "0", "--amp", "off",
                                 "--init-from", str(baseline_checkpoint), "--batch-size", "2", "--epochs", "1",
                                 "--init-parts", "backbone,decoder"])
    assert result.exit_code == 0, result.output
    lists = json.loads((tmp_path / "parts" / "init-from.json").read_text())
    assert lists["parts"] == ["backbone", "decoder"]
    assert all(k.startswith(("backbone.", "decoder.")) for k in lists["loaded"])
    result = runner.invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "alone"), "--config",
                                 "tiny:wo-fbc", "--init-parts", "backbone"])
    assert result.exit_code == 1 and "give --init-from too" in result.output
