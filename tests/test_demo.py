"""`make demo`'s decision to resume an earlier run in demo/run or to set it aside."""
import json
from dataclasses import replace

from cli.demo import TRAIN_SETTINGS, same_recipe
from schemas.config import get_config, save_config


def test_an_earlier_demo_run_is_resumed_only_with_the_same_config_and_settings(tmp_path):
    config = get_config("tiny:msh")
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
