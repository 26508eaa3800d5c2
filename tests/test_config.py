import json

import pytest

from losh.schemas.ablations import ABLATIONS, PAPER_ROWS
from losh.schemas.config import (
    CONFIG_SCHEMA,
    CONFIG_VERSION,
    ConfigError,
    ModelConfig,
    load_config,
    save_config,
    with_overrides,
)
from losh.schemas.presets import get_config, resolve_config


def test_paper_preset_has_the_paper_settings():
    config = get_config("losh-m")
    assert config.use_short_text and config.window == 8
    backbone = config.backbone
    assert (backbone.embed_dim, backbone.depths, backbone.window_size) == (96, (2, 2, 6, 2), (8, 7, 7))
    assert config.backbone.patch_size == (1, 4, 4) and config.backbone.stochastic_depth == 0.1
    assert config.backbone.require_weights and config.text.encoder == "roberta-base" and config.text.freeze
    t = config.transformer
    assert (t.d_model, t.nheads, t.dim_feedforward, t.num_encoder_layers, t.num_decoder_layers, t.num_queries,
            t.mask_kernel_dim, t.cross_attention) == (256, 8, 2048, 4, 3, 50, 8, "long_from_short")
    loss = config.loss
    assert (loss.is_referred, loss.dice, loss.focal, loss.lsi, loss.fbc, loss.eos_coef) == (2, 5, 2, 5, 0.1, 0.1)
    assert loss.focal / loss.dice == pytest.approx(0.4)  # the paper's "focal with a factor 0.4" of lambda_seg
    assert (loss.lsi_threshold, loss.lsi_epsilon) == (0.5, 1.0)


def test_mttr_is_losh_m_without_short_text_lsi_and_fbc_and_with_mttrs_3_encoder_layers():
    mttr, losh = get_config("mttr"), get_config("losh-m")
    assert not mttr.use_short_text and mttr.transformer.cross_attention == "none"
    assert mttr.loss.lsi == mttr.loss.match_lsi == mttr.loss.fbc == 0
    assert mttr.transformer.num_encoder_layers == 3 and losh.transformer.num_encoder_layers == 4
    assert mttr.backbone == losh.backbone and mttr.text == losh.text and mttr.text.lowercase
    assert with_overrides(mttr, {"name": "losh-m", "use_short_text": True,
                                 "transformer.cross_attention": "long_from_short", "loss.lsi": 5.0,
                                 "loss.match_lsi": 5.0, "loss.fbc": 0.1, "transformer.num_encoder_layers": 4,
                                 "inference_short_pathway": "encoder"}) == losh


def test_official_code_variant():
    official = get_config("losh-m:official")
    assert official.use_short_text and official.transformer.cross_attention == "none"
    assert official.transformer.num_encoder_layers == 3
    assert (official.loss.lsi, official.loss.match_lsi, official.loss.fbc) == (0.8, 0.8, 0.0)
    assert not official.inference_uses_short_text     # no cross-attention: the long pathway never reads it


def test_paper_presets_lowercase_texts_and_run_the_short_encoder_at_inference():
    for spec in ("losh-m", "losh-m:msh", "tiny"):
        config = get_config(spec)
        assert config.text.lowercase and config.inference_short_pathway == "encoder"
        assert config.inference_uses_short_text
        assert not with_overrides(config, {"inference_short_pathway": "none"}).inference_uses_short_text
        assert with_overrides(config, {"inference_short_pathway": "none"}).training_part() == config.training_part()
    assert get_config("losh-m").loss.fbc_reduction == "pixel_mean"
    with pytest.raises(ConfigError, match="inference_short_pathway"):
        with_overrides(get_config("mttr"), {"inference_short_pathway": "encoder"})


def test_version_1_configs_keep_their_behaviour():
    data = get_config("tiny").to_dict()
    data["version"] = 1
    del data["text"]["lowercase"], data["inference_short_pathway"], data["loss"]["fbc_reduction"]
    old = ModelConfig.from_dict(data)
    assert old.version == CONFIG_VERSION == 4 and not old.text.lowercase
    assert old.inference_short_pathway == "none" and old.loss.fbc_reduction == "mean"
    data = get_config("mttr").to_dict()
    data["version"] = 1
    del data["inference_short_pathway"]
    assert ModelConfig.from_dict(data).inference_short_pathway == "none"
    data["version"] = 5
    with pytest.raises(ConfigError, match="version 5"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize("preset, short_visibility", [("losh-m", "long"), ("losh-s", "short")])
def test_version_3_configs_keep_their_behaviour(preset, short_visibility):
    """Before version 4: a query's masks over the frames were one sequence, LoSh-M's short pathway took the long
    target's visibility, inference derived the subject rule's short text with spaCy."""
    data = get_config(preset).to_dict()
    data["version"] = 3
    for key in ("frame_terms", "short_visibility", "match_lsi_columns", "lsi_queries"):
        del data["loss"][key]
    del data["short_text_rule"], data["short_text_tagger"]
    old = ModelConfig.from_dict(data)
    assert (old.loss.frame_terms, old.loss.short_visibility) == ("sequence", short_visibility)
    assert (old.loss.match_lsi_columns, old.loss.lsi_queries) == ("referred", "referred")
    assert (old.short_text_rule, old.short_text_tagger) == ("subject", "spacy")
    new = get_config(preset)
    assert (new.loss.frame_terms, new.loss.short_visibility) == ("per_frame", "short")


def test_version_2_configs_keep_their_behaviour():
    """Before the reference models' own behaviours were switches: no whitespace clean-up, a frozen text encoder
    without dropout, a random RoBERTa's LayerNorm eps 1e-12, no boxes in absent frames, the mean sentence feature,
    DETR's positions, no padding."""
    data = get_config("losh-s").to_dict()
    data["version"] = 2
    for part, names in (("text", ("collapse_whitespace", "dropout_when_frozen", "as_written_in_videos",
                                  "layer_norm_eps")),
                        ("loss", ("boxes_in_absent_frames",)),
                        ("sgmg", ("sentence_feature", "position_offset", "pad_multiple", "pad_multiple_videos"))):
        for name in names:
            del data[part][name]
    old = ModelConfig.from_dict(data)
    assert (old.text.collapse_whitespace, old.text.dropout_when_frozen, old.text.as_written_in_videos) == (
        False, False, False)
    assert old.text.layer_norm_eps == 1e-12 and get_config("tiny").text.layer_norm_eps == 1e-5  # a random RoBERTa's
    assert not old.loss.boxes_in_absent_frames
    assert (old.sgmg.sentence_feature, old.sgmg.position_offset, old.sgmg.pad_multiple) == ("mean", 0.0, 1)
    now = get_config("losh-s")
    assert (now.sgmg.sentence_feature, now.sgmg.position_offset, now.sgmg.pad_multiple, now.sgmg.pad_multiple_videos,
            now.loss.boxes_in_absent_frames, now.backbone.stochastic_depth) == ("pooler", 0.5, 32, 16, True, 0.2)


@pytest.mark.parametrize("table,row,expected", [
    ("table2", "Baseline", dict(use_short_text=False, ca="none", lsi=0.0, fbc=0.0)),
    ("table2", "LoSh-M w/o Sh", dict(use_short_text=False, ca="none", lsi=0.0, fbc=0.1)),
    ("table2", "LoSh-M w/o L_lsi", dict(use_short_text=True, ca="long_from_short", lsi=0.0, fbc=0.1)),
    ("table2", "LoSh-M w/o CA", dict(use_short_text=True, ca="none", lsi=5.0, fbc=0.1)),
    ("table2", "LoSh-M w/ Inv-CA", dict(ca="short_from_long")),
    ("table2", "LoSh-M w/ Bi-CA", dict(ca="bidirectional")),
    ("table2", "LoSh-M w/ MSh", dict(short_text_source="machine", ca="long_from_short")),
    ("table2", "LoSh-M (Ours)", dict(short_text_source="data", ca="long_from_short", lsi=5.0, fbc=0.1)),
    ("table3", "LoSh-M w/o L_fbc", dict(fbc=0.0, fbc_variant="standard")),
    ("table3", "LoSh-M w/ L^o_fbc", dict(fbc=0.1, fbc_variant="opposite")),
    ("table3", "LoSh-M w/ L^m_fbc", dict(fbc=0.1, fbc_variant="mutual")),
])
def test_every_ablation_row_is_a_switch(table, row, expected):
    config = get_config(PAPER_ROWS[table][row])
    actual = dict(use_short_text=config.use_short_text, ca=config.transformer.cross_attention,
                  lsi=config.loss.lsi, fbc=config.loss.fbc, fbc_variant=config.loss.fbc_variant,
                  short_text_source=config.short_text_source)
    assert {k: actual[k] for k in expected} == expected
    # a switch changes nothing else: the backbone, text encoder and dims stay the paper's
    assert config.backbone == get_config("losh-m").backbone
    assert config.transformer.d_model == 256


def test_switches_apply_to_the_tiny_preset_too():
    tiny = get_config("tiny")
    assert not tiny.backbone.require_weights and not tiny.text.pretrained
    assert tiny.transformer.num_encoder_layers == 4 and tiny.transformer.num_decoder_layers == 3
    for ablation in ABLATIONS:
        config = get_config(f"tiny:{ablation}")
        assert config.backbone == tiny.backbone
    assert get_config("tiny:inv-ca").transformer.cross_attention == "short_from_long"


def test_json_round_trip(tmp_path):
    config = get_config("tiny:mfbc")
    path = tmp_path / "sub" / "model.json"
    save_config(config, path)
    data = json.loads(path.read_text())
    assert data["schema"] == CONFIG_SCHEMA and data["version"] == CONFIG_VERSION
    assert load_config(path) == config
    assert resolve_config(str(path)) == config
    assert resolve_config("tiny:mfbc") == config
    assert [p.name for p in path.parent.iterdir()] == ["model.json"]  # no temporary file left


def test_bad_files_and_values_are_refused(tmp_path):
    data = get_config("tiny").to_dict()
    path = tmp_path / "c.json"
    for broken, message in [
        ({**data, "version": CONFIG_VERSION + 1}, "version"),
        ({**data, "schema": "something.else"}, "schema"),
        ({**data, "colour": "red"}, "unknown fields"),
        ({**data, "loss": {**data["loss"], "dice_weight": 1}}, "unknown fields"),
        ({**data, "loss": {**data["loss"], "fbc_variant": "sideways"}}, "fbc_variant"),
        ({**data, "transformer": {**data["transformer"], "d_model": 100}}, "multiple of 64"),
        ({**data, "transformer": {**data["transformer"], "num_queries": "fifty"}}, "num_queries"),
        ({**data, "backbone": {**data["backbone"], "patch_size": [2, 4, 4]}}, "temporal patch"),
        ({**data, "use_short_text": False}, "short text"),
    ]:
        path.write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_config("losh-x")
    with pytest.raises(ConfigError, match="unknown ablation"):
        get_config("losh-m:wo-everything")
    with pytest.raises(ConfigError, match="unknown config field"):
        with_overrides(get_config("tiny"), {"loss.nope": 1})
    with pytest.raises(ConfigError):
        ModelConfig(name="x", use_short_text=False)  # CA and L_lsi are on by default: inconsistent
