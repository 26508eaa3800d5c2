"""Nothing of a user's is destroyed or silently replaced: synth refuses folders holding data, prepare-data refuses a set
made with other settings, train refuses flows of another preparation, predict cleans a killed run's staging folder,
evaluate says when the data's window is not the model's."""
from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.pipeline.prepared_folder import PreparedSetDiffers
from losh.pipeline.synth import write_synthetic_a2d
from losh.pipeline.synth_layouts import (
    write_synthetic_jhmdb,
    write_synthetic_refer_davis,
    write_synthetic_refer_youtube_vos,
)
from losh.pipeline.synth_output import SYNTH_MARKER
from losh.schemas.folders import FolderNotEmpty
from losh.schemas.locks import LOCK_NAME


def _decoder() -> str:
    """The `prepared` fixture's decoder: PyAV where installed, else OpenCV (as conftest.py chooses)."""
    try:
        return "pyav" if importlib.util.find_spec("av") is not None else "opencv"
    except ImportError:
        return "opencv"


SETTINGS = PrepareSettings(window=8, short_side=64, max_long_side=88, decoder=_decoder())   # the fixture's
WRITERS = {
    "a2d": lambda out, **kw: write_synthetic_a2d(out, videos=3, height=48, width=64, frames=8, annotated_per_video=1,
                                                 progress=False, **kw),
    "refer-youtube-vos": lambda out, **kw: write_synthetic_refer_youtube_vos(out, videos=3, height=48, width=64,
                                                                             frames=10, progress=False, **kw),
    "refer-davis": lambda out, **kw: write_synthetic_refer_davis(out, videos=2, height=48, width=64, frames=4,
                                                                 progress=False, **kw),
    "jhmdb": lambda out, **kw: write_synthetic_jhmdb(out, videos=1, height=48, width=64, frames=5, progress=False,
                                                     **kw),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def user_data(folder: Path) -> dict[str, bytes]:
    """A folder that looks like a real data set (the a2d layout's names) plus a file of the user's."""
    (folder / "Release").mkdir(parents=True)
    (folder / "Release" / "videoset.csv").write_text("real,data\n")
    (folder / "notes.txt").write_text("my notes\n")
    return snapshot(folder)


# ------------------------------------------------------------------------------------------------- synth

@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_synth_refuses_a_folder_holding_data_also_with_overwrite(layout, tmp_path):
    out = tmp_path / "data"
    before = user_data(out)
    with pytest.raises(FolderNotEmpty) as refused:
        WRITERS[layout](out)
    message = str(refused.value)
    assert "\n" not in message and str(out) in message and "empty folder" in message and "--overwrite" in message
    with pytest.raises(FolderNotEmpty, match=SYNTH_MARKER.replace(".", r"\.")):
        WRITERS[layout](out, overwrite=True)                  # not a set synth wrote: the user's data
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]   # no staging folder left beside it


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_synth_marks_its_set_and_overwrite_replaces_it_whole(layout, tmp_path):
    out = tmp_path / "set"
    out.mkdir()                                               # an empty folder is fine, and stays the same folder
    inode = out.stat().st_ino
    WRITERS[layout](out, seed=1)
    assert out.stat().st_ino == inode
    marker = json.loads((out / SYNTH_MARKER).read_text())
    assert marker["layout"] == layout and marker["params"]["seed"] == 1
    assert set(marker["files"]) == set(snapshot(out)) - {SYNTH_MARKER}
    first = snapshot(out)
    with pytest.raises(FolderNotEmpty, match="--overwrite"):
        WRITERS[layout](out, seed=2)
    assert snapshot(out) == first
    WRITERS[layout](out, seed=2, overwrite=True)
    assert json.loads((out / SYNTH_MARKER).read_text())["params"]["seed"] == 2 and snapshot(out) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_synth_overwrite_keeps_a_marked_set_that_holds_files_it_did_not_write(tmp_path):
    out = tmp_path / "raw"
    WRITERS["a2d"](out)
    (out / "prep").mkdir()
    (out / "prep" / "manifest.json").write_text("{}")          # e.g. prepare-data --out inside the raw root
    before = snapshot(out)
    with pytest.raises(FolderNotEmpty, match="did not write .*prep/manifest.json"):
        WRITERS["a2d"](out, overwrite=True)
    assert snapshot(out) == before


def test_synth_error_midway_leaves_the_earlier_set_and_no_staging(tmp_path, monkeypatch):
    from losh.pipeline import synth

    out = tmp_path / "raw"
    WRITERS["a2d"](out)
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth, "write_mp4", broken)
    with pytest.raises(OSError, match="disk full"):
        WRITERS["a2d"](out, seed=5, overwrite=True)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_synth_removes_a_killed_writers_staging_folder_but_not_a_live_ones(tmp_path, live_process):
    dead = tmp_path / f".raw.partial-{dead_pid()}"
    live = tmp_path / f".raw.partial-{live_process.pid}"
    for stage in (dead, live):
        stage.mkdir()
        (stage / "half.mp4").write_bytes(b"half")
    WRITERS["a2d"](tmp_path / "raw")
    assert not dead.exists() and (live / "half.mp4").exists()


# ------------------------------------------------------------------------------------------ prepare-data

def prepare(root: Path, out: Path, settings: PrepareSettings = SETTINGS, **kw) -> dict:
    return prepare_a2d(root, out, short_source="manual", settings=settings, workers=1, progress=False, **kw)


def test_prepare_refuses_a_set_made_with_other_settings_naming_them(prepared_with_flows, synth_root, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(prepared_with_flows, prep)
    before = snapshot(prep)
    other = replace(SETTINGS, window=6, short_side=48)
    with pytest.raises(PreparedSetDiffers) as refused:
        prepare(synth_root, prep, other)
    message = str(refused.value)
    assert "\n" not in message and str(prep) in message
    assert "--window 8 -> 6" in message and "--short-side 64 -> 48" in message and "max-long-side" not in message
    assert "--overwrite" in message and "--out" in message
    with pytest.raises(PreparedSetDiffers, match="--short-text manual -> machine"):
        prepare_a2d(synth_root, prep, short_source="machine", settings=SETTINGS, workers=1, progress=False)
    assert snapshot(prep) == before                            # untouched, its flows too
    assert not (prep / LOCK_NAME).exists()


def test_prepare_overwrite_replaces_the_set_and_its_flows_but_nothing_else(prepared_with_flows, synth_root, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(prepared_with_flows, prep)
    (prep / "notes.txt").write_text("mine\n")
    manifest = prepare(synth_root, prep, replace(SETTINGS, window=6), overwrite=True)
    assert manifest["window"] == 6 and manifest["counts"]["videos_resumed"] == 0
    assert not (prep / "flows").exists() and (prep / "notes.txt").read_text() == "mine\n"
    assert json.loads((prep / "manifest.json").read_text())["window"] == 6


def test_prepare_with_the_same_settings_resumes_and_keeps_the_flows(prepared_with_flows, synth_root, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(prepared_with_flows, prep)
    flows = snapshot(prep / "flows")
    manifest = prepare(synth_root, prep)
    assert manifest["counts"]["videos_resumed"] == manifest["counts"]["videos"] > 0
    assert snapshot(prep / "flows") == flows


def test_prepare_refuses_a_folder_that_is_not_a_prepared_set_also_with_overwrite(synth_root, tmp_path):
    out = tmp_path / "data"
    before = user_data(out)
    for overwrite in (False, True):
        with pytest.raises(FolderNotEmpty, match="not a prepared data set") as refused:
            prepare(synth_root, out, overwrite=overwrite)
        assert "\n" not in str(refused.value) and str(out) in str(refused.value)
    assert snapshot(out) == before                             # not even a lock file was written


def test_prepare_resumes_its_own_partial_run(prepared, synth_root, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(prepared, prep)
    (prep / "manifest.json").unlink()                          # killed before the manifest, as a partial run is
    (prep / ".samples.jsonl.tmp-123-abcd1234").write_text("half")
    (prep / "shards" / ".x.h5.tmp-123-abcd1234.h5").write_bytes(b"half")
    (prep / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                              "command": "losh prepare-data"}))
    manifest = prepare(synth_root, prep)
    assert manifest["counts"]["videos_resumed"] == manifest["counts"]["videos"] > 0


def test_prepare_cli_refuses_other_settings_in_one_line(prepared, synth_root, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(prepared, prep)
    result = CliRunner().invoke(app, ["prepare-data", "--root", str(synth_root), "--out", str(prep), "--short-text",
                                      "manual", "--short-side", "64", "--max-long-side", "88", "--window", "6",
                                      "--decoder", SETTINGS.decoder,
                                      "--workers", "1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--window 8 -> 6" in lines[0] and "--overwrite" in lines[0]


# ------------------------------------------------------------------------------------------------- train

def _train_settings():
    from losh.schemas.train import TrainSettings
    return TrainSettings(epochs=1, batch_size=1, num_workers=0, max_steps=1, amp="off", eval_every=0)


def test_train_refuses_flows_of_another_preparation_before_the_run_folder_exists(prepared_with_flows, synth_root,
                                                                                  tmp_path):
    from losh.schemas.flow_reader import FlowsStale
    from losh.schemas.presets import get_config
    from losh.training.loop import train

    prep = tmp_path / "prep"
    prepare(synth_root, prep, replace(SETTINGS, short_side=48, max_long_side=66))
    shutil.copytree(prepared_with_flows / "flows", prep / "flows")    # flows of the set as prepared before
    run = tmp_path / "run"
    with pytest.raises(FlowsStale, match="compute-flows") as refused:
        train(prep, get_config("tiny"), run, _train_settings(), progress=False)
    assert "\n" not in str(refused.value) and "other settings" in str(refused.value)
    assert not run.exists()
    result = CliRunner().invoke(app, ["train", "--data", str(prep), "--out", str(run), "--config", "tiny",
                                      "--workers", "0", "--max-steps", "1"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and f"losh compute-flows --data {prep}" in lines[0]
    assert not run.exists()


def test_train_refuses_flows_of_shards_prepared_again(prepared_with_flows, tmp_path):
    from losh.data.dataset import RVOSDataset
    from losh.pipeline.flows import compute_flows
    from losh.schemas.flow_reader import FlowsStale

    prep = tmp_path / "prep"
    shutil.copytree(prepared_with_flows, prep)
    shard = prep / "shards" / f"{min(r.video_id for r in RVOSDataset(prep, 'train').data.records)}.h5"
    with h5py.File(shard, "r+") as f:          # the same settings, other inputs: the shard's own hash changes
        f.attrs["settings_hash"] = "0123456789abcdef"
    with pytest.raises(FlowsStale, match=f"flows of 1 videos \\({shard.stem}\\).*losh compute-flows"):
        RVOSDataset(prep, "train", with_flows=True).check_readable()
    run = compute_flows(prep, workers=0, progress=False)        # the repair the message names
    assert run.computed == [shard.stem]
    RVOSDataset(prep, "train", with_flows=True).check_readable()


# ----------------------------------------------------------------------------------------------- predict

def test_predict_removes_stale_staging_folders_of_its_target_only(tmp_path, live_process):
    from losh.inference.predict import PredictError, predict

    frames = tmp_path / "frames"
    frames.mkdir()
    gone = dead_pid()
    stale = tmp_path / f".out.partial-{gone}"
    kept = [tmp_path / f".out.partial-{live_process.pid}", tmp_path / f".other.partial-{gone}",
            tmp_path / f".out.old-{gone}"]             # a live run's; another target's; the only earlier output
    for folder in (stale, *kept):
        folder.mkdir()
        (folder / "00000.png").write_bytes(b"png")
    with pytest.raises(PredictError):                   # the run itself fails later (no checkpoint)
        predict(tmp_path / "missing.pt", frames, ["x"], tmp_path / "out", device="cpu")
    assert not stale.exists() and all((k / "00000.png").exists() for k in kept)
    (tmp_path / "out").mkdir()                          # with the output in place, the aside copy is stale
    with pytest.raises(PredictError):
        predict(tmp_path / "missing.pt", frames, ["x"], tmp_path / "out", device="cpu")
    assert not (tmp_path / f".out.old-{gone}").exists() and kept[0].exists() and kept[1].exists()


# ---------------------------------------------------------------------------------------------- evaluate

@pytest.fixture(scope="module")
def window_8_checkpoint(tmp_path_factory) -> Path:
    """An untrained `tiny:wo-fbc` model (window 8) saved as a training checkpoint."""
    from losh.models.registry import build_model
    from losh.schemas.presets import get_config
    from losh.training.checkpoint import CHECKPOINT_SCHEMA, CHECKPOINT_VERSION, atomic_save

    torch.manual_seed(0)
    config = get_config("tiny:wo-fbc")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    atomic_save({"schema": CHECKPOINT_SCHEMA, "version": CHECKPOINT_VERSION, "model_config": config.to_dict(),
                 "model": build_model(config).state_dict(), "model_ema": None}, path)
    return path


def test_evaluate_warns_and_records_both_windows_when_they_differ(window_8_checkpoint, synth_root, prepared,
                                                                   tmp_path):
    from losh.evaluation.evaluate import WindowMismatch, evaluate_checkpoint

    prep6 = tmp_path / "prep6"
    prepare(synth_root, prep6, replace(SETTINGS, window=6))
    kw = {"progress": False, "device": "cpu", "max_samples": 2, "resolution": "prepared",
          "inference_short_pathway": "none"}
    with pytest.warns(WindowMismatch, match="--window 6 .* 8 frames"):
        report = evaluate_checkpoint(prep6, window_8_checkpoint, out=tmp_path / "m.json", **kw)
    assert report["window"] == {"data": 6, "model": 8} and "--window 8" in report["warnings"][0]
    assert json.loads((tmp_path / "m.json").read_text())["window"] == {"data": 6, "model": 8}
    with warnings.catch_warnings():
        warnings.simplefilter("error", WindowMismatch)
        same = evaluate_checkpoint(prepared, window_8_checkpoint, **kw)
    assert same["window"] == {"data": 8, "model": 8} and "warnings" not in same


def test_evaluate_cli_warns_in_one_line(window_8_checkpoint, synth_root, tmp_path):
    prep6 = tmp_path / "prep6"
    prepare(synth_root, prep6, replace(SETTINGS, window=6))
    result = CliRunner().invoke(app, ["evaluate", "--data", str(prep6), "--checkpoint", str(window_8_checkpoint),
                                      "--out", str(tmp_path / "eval"), "--device", "cpu", "--resolution", "prepared",
                                      "--inference-short-pathway", "none"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "prepared with --window 6" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and ".py" not in lines[0], result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["window"] == {"data": 6, "model": 8}
