"""Checkpoints written before the package was reorganised still load, and compute what they computed then."""
from pathlib import Path

import pytest
import torch

from losh.training.checkpoint import load_checkpoint, load_model
from losh.training.optim import param_groups

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_checkpoints"


@pytest.mark.parametrize("name", ["tiny", "tiny_s"])
def test_a_checkpoint_of_the_flat_layout_gives_the_same_outputs(name):
    model, ckpt = load_model(FIXTURES / f"{name}_dbd33de.pt", torch.device("cpu"))
    saved = torch.load(FIXTURES / f"{name}_dbd33de_outputs.pt", weights_only=True)
    with torch.no_grad():
        result = model.infer(saved["frames"].float(), saved["long_texts"], saved["short_texts"],
                             annotated_index=saved["annotated_index"])
    assert torch.equal(result["best_query"], saved["best_query"])
    torch.testing.assert_close(result["scores"], saved["scores"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result["mask_logits"], saved["mask_logits"], rtol=1e-5, atol=1e-5)
    assert ckpt["model_config"]["name"] == f"{name.replace('_', '-')}-legacy"


@pytest.mark.parametrize("name", ["tiny", "tiny_s"])
def test_its_weights_and_optimiser_groups_fit_todays_model_exactly(name):
    ckpt = load_checkpoint(FIXTURES / f"{name}_dbd33de.pt")
    model, _ = load_model(FIXTURES / f"{name}_dbd33de.pt", torch.device("cpu"), use_ema=False)
    assert list(model.state_dict()) == list(ckpt["model"])          # same names, same order
    settings = ckpt["train_settings"]
    optimizer = torch.optim.AdamW(param_groups(model, settings["lr"], settings["backbone_lr"],
                                               settings["weight_decay"], settings["text_encoder_lr"]))
    optimizer.load_state_dict(ckpt["optimizer"])                      # what --resume does: same groups, same sizes
    assert [len(g["params"]) for g in optimizer.state_dict()["param_groups"]] == \
        [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]]
