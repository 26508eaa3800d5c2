"""`make demo`'s decision to resume an earlier run in demo/run or to set it aside."""
import json
from dataclasses import replace

from losh.cli.demo import TRAIN_SETTINGS, same_recipe
from losh.schemas.config import save_config
from losh.schemas.presets import get_config


def test_an_earlier_demo_run_is_resumed_only_with_the_same_config_and_settings(tmp_path):
    config = get_config("tiny:msh-subject")
    run = tmp_path / "run"
    assert not same_recipe(run, config, TRAIN_SETTINGS)                     # nothing there
    save_config(config, run / "config.json")
    (run / "train.json").write_text(json.dumps(TRAIN_SETTINGS.to_dict()))
    assert same_recipe(run, config, TRAIN_SETTINGS)
    assert same_recipe(run, config, replace(TRAIN_SETTINGS, epochs=TRAIN_SETTINGS.epochs + 3))  # a longer demo
    assert not same_recipe(run, config, replace(TRAIN_SETTINGS, ema_decay=0.0))
    assert not same_recipe(run, config, replace(TRAIN_SETTINGS, batch_size=TRAIN_SETTINGS.batch_size + 1))
    assert not same_recipe(run, get_config("tiny"), TRAIN_SETTINGS)
    (run / "train.json").write_text("{not json")
    assert not same_recipe(run, config, TRAIN_SETTINGS)


def test_the_demo_model_is_losh_s_with_its_cross_attention():
    """The demo's overrides make a valid LoSh-S config whose 2-layer encoder still has a CA layer (layer 2)."""
    from losh.cli.demo import DEMO_BASE_CONFIG, DEMO_CONFIG_OVERRIDES
    from losh.models.registry import build_model
    from losh.schemas.config import with_overrides

    config = with_overrides(get_config(DEMO_BASE_CONFIG), DEMO_CONFIG_OVERRIDES)
    assert config.architecture == "sgmg" and config.use_short_text and config.window == 5
    assert config.transformer.cross_attention == "long_from_short"
    model = build_model(config)
    encoder = model.transformer.encoder
    assert len(encoder.layers) == 2
    assert list(encoder.long_cross) == ["1"] and not encoder.short_cross   # the 2nd layer: long reads short
