"""Tables 2 and 3 as the paper defines them: each ablation preset is exactly its row (docs/models/ablations.md,
read here), the per-frame terms of eq. 1 and 5 against hand computations, one visibility rule for the short
pathway, the official code's L_lsi reading one preset away, and the machine short text a model was trained with
used again at inference."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.models.losh_m.criterion import LoShMCriterion, prepare_targets
from losh.models.losh_m.matcher import FrameTargets, LongShortMatcher
from losh.models.shared.losses import dice_loss, frame_mean_dice, is_referred_loss, lsi_loss
from losh.schemas.ablations import PAPER_ROWS
from losh.schemas.config import LossConfig, ModelConfig, with_overrides
from losh.schemas.presets import get_config, resolve_config

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "docs/models/ablations.md"


def flat(body: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in body.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def documented_rows() -> list[dict]:
    """The rows of the table in docs/models/ablations.md: table, paper row, preset, switches {key: value}."""
    rows = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ("2", "3"):
            switches = {} if cells[3] == "none" else dict(
                item.split("=", 1) for item in re.findall(r"`([^`]+)`", cells[3]))
            rows.append({"table": f"table{cells[0]}", "row": cells[1], "preset": cells[2].strip("`"),
                         "switches": switches})
    return rows


def as_text(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def test_the_documented_table_is_the_presets_and_the_paper_rows():
    rows = documented_rows()
    assert {(r["table"], r["row"], r["preset"]) for r in rows} == {
        (table, row, spec) for table, specs in PAPER_ROWS.items() for row, spec in specs.items()}
    base = flat(get_config("losh-m").to_dict())
    for row in rows:
        config = flat(resolve_config(row["preset"]).to_dict())
        differs = {k: as_text(v) for k, v in config.items() if v != base[k] and k != "name"}
        assert differs == row["switches"], row["row"]


def test_each_row_is_the_papers_definition():
    baseline, wo_sh = resolve_config("losh-m:baseline"), resolve_config("losh-m:wo-sh")
    # w/o Sh: "baseline MTTR plus the forward-backward visual consistency": only L_fbc tells them apart
    differs = {k for k, v in flat(wo_sh.to_dict()).items() if v != flat(baseline.to_dict())[k] and k != "name"}
    assert differs == {"loss.fbc"} and wo_sh.transformer.num_encoder_layers == 3
    msh = resolve_config("losh-m:msh")     # NLTK's tagger, the words before the first verb
    assert (msh.short_text_source, msh.short_text_rule, msh.short_text_tagger) == ("machine", "first-verb", "nltk")
    subject = resolve_config("losh-m:msh-subject")
    assert (subject.short_text_source, subject.short_text_rule, subject.short_text_tagger) == \
           ("machine", "subject", "spacy")
    # on LoSh-S the baseline and w/o Sh keep SgMg's encoder (MTTR's 3 layers are MTTR's own)
    assert resolve_config("losh-s:wo-sh").transformer.num_encoder_layers == \
           resolve_config("losh-s:baseline").transformer.num_encoder_layers == get_config("losh-s").transformer.num_encoder_layers
    official = resolve_config("losh-m:official").loss
    assert (official.match_lsi_columns, official.lsi_queries) == ("all", "matched")


# ----------------------------------------------------------------------------------- per-frame terms by hand

def _two_frames():
    """One sample, two supervised frames of 1 x 2 pixels, two instances; instance 0 is referred and absent from
    frame 1, where its short mask (merged with instance 1, same short text) is not."""
    instances = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]],      # frame 0: (N, H, W)
                              [[[0.0, 0.0]], [[0.0, 1.0]]]])     # frame 1
    short = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])           # (A, H, W)
    return {"instance_masks": instances, "referred_index": 0, "short_mask": short}


def test_lsi_and_matching_dice_per_frame_by_hand():
    long = torch.tensor([[0.9, 0.0, 0.6, 0.6]])      # frames: (0.9, 0) and (0.6, 0.6)
    short = torch.tensor([[0.9, 0.9, 0.0, 0.7]])
    frame0 = 1 - (0.81 + 1) / (0.9 + 1)
    frame1 = 1 - (0.42 + 1) / (1.2 + 1)
    assert lsi_loss(long, short, frames=2).item() == pytest.approx((frame0 + frame1) / 2, abs=1e-6)
    sequence = 1 - (0.81 + 0.42 + 1) / (2.1 + 1)
    assert lsi_loss(long, short).item() == pytest.approx(sequence, abs=1e-6)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    dice0 = (2 * 0.9 + 1) / (0.9 + 1 + 1)
    dice1 = (2 * 0.6 + 1) / (1.2 + 1 + 1)
    assert frame_mean_dice(long, target, 2).item() == pytest.approx((dice0 + dice1) / 2, abs=1e-6)


def test_losh_m_dice_is_per_frame_and_the_sequence_form_a_switch():
    target = prepare_targets([_two_frames()], (1, 2))[0]
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.5]])                    # one query's masks over the two frames
    wanted = target.long_masks[:1]
    per_frame = dice_loss(logits.view(2, 2), wanted.view(2, 2), 2.0)  # MTTR: each frame a mask, / frame masks
    probs = logits.sigmoid().view(2, 2)
    by_hand = sum(1 - (2 * (probs[a] * wanted.view(2, 2)[a]).sum() + 1) / (probs[a].sum() + wanted.view(2, 2)[a].sum()
                                                                            + 1) for a in range(2)) / 2
    assert per_frame.item() == pytest.approx(by_hand.item(), abs=1e-6)
    criterion = LoShMCriterion(LossConfig(aux_loss=False))
    sequence = LoShMCriterion(LossConfig(aux_loss=False, frame_terms="sequence"))
    queries = 3
    out = {"pred_is_referred": torch.zeros(1, 2, queries, 2), "pred_masks": torch.full((1, 2, queries, 1, 2), -4.0)}
    out["pred_masks"][0, :, 0] = logits.view(2, 1, 2)                  # query 0 is the referred instance's
    out["pred_masks"][0, :, 1] = torch.tensor([[[-4.0, 4.0]], [[-4.0, 4.0]]])
    outputs = {"long": dict(out), "short": dict(out), "supervised": [0, 1], "frames": 2}
    targets = [_two_frames()]
    a = criterion.layer_losses(*_layer(criterion, outputs, targets))
    b = sequence.layer_losses(*_layer(sequence, outputs, targets))
    assert not torch.isclose(a["loss_dice_long"], b["loss_dice_long"])
    assert torch.isclose(a["loss_focal_long"], b["loss_focal_long"])   # mean over pixels: the same either way


def _layer(criterion, outputs, targets):
    """(layer, targets, matched, normaliser) as the criterion's forward builds them for the last layer."""
    from losh.models.shared.criterion import parse_targets

    parsed = parse_targets(targets, (1, 2))
    model_targets = criterion.model_targets(parsed, outputs)
    layer = {p: {k: v.float() for k, v in outputs[p].items()} for p in ("long", "short")}
    layer = {p: {"pred_is_referred": v["pred_is_referred"], "pred_masks": v["pred_masks"].transpose(1, 2)}
             for p, v in layer.items()}
    matched = criterion.match_layers([layer], model_targets)[0]
    return layer, model_targets, matched, criterion.normaliser(model_targets)


def test_the_short_pathway_is_referred_where_its_own_target_is_visible():
    target = prepare_targets([_two_frames()], (1, 2))[0]
    assert target.visible.tolist() == [True, False] and target.short_visible.tolist() == [True, True]
    assert target.visible_for("short").tolist() == [True, True]
    assert target.visible_for("short", "long").tolist() == [True, False]
    assert target.visible_for("long").tolist() == [True, False]
    logits = torch.tensor([[[1.0, -1.0], [0.0, 0.0]], [[0.5, 0.2], [0.3, 0.1]]])   # (frames, queries, 2)
    own = is_referred_loss(logits, torch.tensor([0, 0]), 0.1, target.short_visible, normaliser=1)
    longs = is_referred_loss(logits, torch.tensor([0, 0]), 0.1, target.visible, normaliser=1)
    criterion = LoShMCriterion(LossConfig(aux_loss=False, lsi=0, match_lsi=0))
    old = LoShMCriterion(LossConfig(aux_loss=False, lsi=0, match_lsi=0, short_visibility="long"))
    out = {"pred_is_referred": logits[None], "pred_masks": torch.full((1, 2, 2, 1, 2), -4.0)}
    outputs = {"long": dict(out), "short": dict(out)}
    for crit, short_expected in ((criterion, own), (old, longs)):
        layer, targets, _, num = _layer(crit, outputs, [_two_frames()])
        matched = [type(m)(torch.tensor([0, 1]), torch.tensor([0, 1]), 0) for m in crit.match_layers([layer],
                                                                                                     targets)[0]]
        losses = crit.layer_losses(layer, targets, matched, num)
        assert losses["loss_is_referred_short"].item() == pytest.approx(short_expected.item(), abs=1e-6)
        assert losses["loss_is_referred_long"].item() == pytest.approx(longs.item(), abs=1e-6)


def test_official_reading_puts_lsi_in_every_column():
    probs_long = torch.tensor([[0.9, 0.0], [0.5, 0.5]])
    probs_short = torch.tensor([[0.9, 0.9], [0.0, 0.0]])
    target = FrameTargets(long_masks=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                          short_masks=torch.tensor([[1.0, 1.0], [0.0, 1.0]]), referred_index=0, size=(1, 2))
    logits = torch.zeros(2, 2)
    referred = LongShortMatcher().cost_matrix(logits, probs_long, target, logits, probs_short)
    every = LongShortMatcher(lsi_columns="all").cost_matrix(logits, probs_long, target, logits, probs_short)
    without = LongShortMatcher(cost_lsi=0).cost_matrix(logits, probs_long, target, logits, probs_short)
    lsi = 5 * lsi_loss(probs_long, probs_short)
    assert torch.allclose(referred[:, 0] - without[:, 0], lsi) and torch.equal(referred[:, 1], without[:, 1])
    assert torch.allclose(every - without, lsi[:, None].expand(2, 2))


# ------------------------------------------------------------------------------ machine short text, both ends

@pytest.fixture(scope="module")
def first_verb_data(synth_root, tmp_path_factory):
    """The synthetic set prepared with the paper's first-verb rule (`--tagger auto`)."""
    prep = tmp_path_factory.mktemp("fv") / "prep"
    result = CliRunner().invoke(app, ["prepare-data", "--root", str(synth_root), "--out", str(prep), "--rule",
                                      "first-verb", "--short-side", "64", "--max-long-side", "88", "--workers", "1"])
    assert result.exit_code == 0, result.output
    return prep, result.output


def test_first_verb_data_says_which_tagger_and_msh_trains_on_it(first_verb_data, prepared, tmp_path):
    from losh.pipeline.shorten import nltk_tagger_installed

    prep, output = first_verb_data
    short = json.loads((prep / "manifest.json").read_text())["short_text"]
    nltk = nltk_tagger_installed()
    assert short["rule"] == "first-verb" and short["tagger"] == ("nltk" if nltk else "spacy")
    assert nltk or ("spaCy's tagger with the same rule" in output and "note" in short)
    args = ["--max-steps", "1", "--epochs", "1", "--workers", "0", "--amp", "off"]
    result = CliRunner().invoke(app, ["train", "--data", str(prep), "--out", str(tmp_path / "msh"), "--config",
                                      "tiny:msh", "--set", "loss.fbc=0", *args])
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "msh" / "config.json").read_text())
    assert (recorded["short_text_rule"], recorded["short_text_tagger"]) == ("first-verb", short["tagger"])
    # the subject rule's preset refuses it, naming the command that makes its data
    result = CliRunner().invoke(app, ["train", "--data", str(prep), "--out", str(tmp_path / "subject"), "--config",
                                      "tiny:msh-subject", "--set", "loss.fbc=0", *args])
    assert result.exit_code == 1 and "--rule subject" in result.output and not (tmp_path / "subject").exists()


def test_inference_derives_the_short_text_the_model_was_trained_with(first_verb_data):
    from losh.evaluation.evaluate import inference_short_texts
    from losh.pipeline.shorten import Shortener
    from losh.schemas.prepared_reader import PreparedDataset

    prep, _ = first_verb_data
    data = PreparedDataset(prep, "test")
    tagger = data.manifest["short_text"]["tagger"]
    trained_first_verb = with_overrides(get_config("tiny"), {"short_text_rule": "first-verb",
                                                             "short_text_tagger": tagger})
    shorts, source = inference_short_texts(data, trained_first_verb)
    assert shorts is None and source == f"machine ({tagger}/first-verb, prepared)"
    trained_subject = with_overrides(get_config("tiny"), {"short_text_rule": "subject"})
    shorts, source = inference_short_texts(data, trained_subject)
    expected = Shortener("spacy", "subject").shorten_many([r.long for r in data.records])
    assert source.startswith("machine (spacy/subject") and list(shorts.values()) == \
           [s.strip() or r.long for s, r in zip(expected, data.records)]
    assert ModelConfig.from_dict(trained_first_verb.to_dict()).short_text_rule == "first-verb"   # in checkpoints
