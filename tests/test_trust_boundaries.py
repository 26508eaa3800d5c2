"""Ids stay inside their folders, a resumed run changes only what it should, one writer per folder, data faults are
named with their repair before a run starts, and nothing is left behind by a killed process."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.pipeline.prepare import PrepareSettings, prepare_a2d, prepare_dataset
from losh.schemas.locks import LOCK_NAME, FolderBusy, folder_lock, refuse_if_locked
from losh.schemas.prepared import SampleRecord, SchemaError
from losh.schemas.presets import get_config
from losh.schemas.safe_paths import UnsafeName, join_ids, unsafe_reason
from losh.schemas.train import TrainSettings
from losh.training.checkpoint import load_checkpoint
from losh.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = PrepareSettings(window=8, short_side=64, max_long_side=88)
CONFIG = get_config("tiny:wo-fbc")


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content's hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _settings(**changes) -> TrainSettings:
    return TrainSettings(**{"epochs": 2, "batch_size": 2, "num_workers": 0, "amp": "off", "lr_milestones": (1,),
                            "log_every_steps": 1, **changes})


# ------------------------------------------------------------------------------------------- ids

@pytest.mark.parametrize("name, unsafe", [("abc_123-X", False), ("00005", False), ("a b", False), ("..", True),
                                          (".", True), ("", True), ("a/b", True), ("..\\x", True), ("/etc", True),
                                          ("../../ESC", True), ("x\x00y", True)])
def test_an_id_is_one_plain_name(name, unsafe):
    assert (unsafe_reason(name) is not None) == unsafe
    if unsafe:
        with pytest.raises(UnsafeName):
            join_ids("/tmp/out", name)
    else:
        assert join_ids("/tmp/out", name) == Path("/tmp/out") / name


def test_a2d_ids_that_escape_are_reported_and_nothing_is_read_or_written_outside(raw_copy, tmp_path):
    outside = tmp_path / "ESC"
    outside.mkdir()
    escape = "../../../ESC/evil"
    videoset = raw_copy / "Release" / "videoset.csv"
    first = videoset.read_text().splitlines()[0].split(",")
    videoset.write_text(videoset.read_text() + ",".join([escape] + first[1:]) + "\n")
    annotations = raw_copy / "text_annotations" / "a2d_annotation.txt"
    annotations.write_text(annotations.read_text() + f"{escape},1,the escaping man,the man\n")
    shutil.copyfile(raw_copy / "Release" / "clips320H" / f"{first[0]}.mp4", outside / "evil.mp4")
    out = tmp_path / "deep" / "prep"
    manifest = prepare_a2d(raw_copy, out, short_source="manual", settings=SETTINGS, workers=1, progress=False)
    problems = json.loads((out / "report.json").read_text())["problems"]
    assert any(p["video_id"] == escape and "not a plain" in p["reason"] for p in problems)
    assert manifest["counts"]["videos"] > 0
    assert list(tmp_path.rglob("evil.h5")) == []                       # no shard of it, inside --out or out of it
    assert sorted(os.listdir(outside)) == ["evil.mp4"] and sorted(os.listdir(tmp_path / "deep")) == ["prep"]


def test_refer_youtube_vos_and_davis_ids_that_escape_are_reported(tmp_path):
    from losh.pipeline.datasets.refer_davis import read_refer_davis
    from losh.pipeline.datasets.refer_youtube_vos import read_meta_expressions
    from losh.pipeline.synth_layouts import write_synthetic_refer_davis

    meta = tmp_path / "meta_expressions.json"
    meta.write_text(json.dumps({"videos": {
        "../escape": {"frames": ["00000"], "expressions": {"0": {"exp": "a man", "obj_id": "1"}}},
        "ok": {"frames": ["00000", "../../x"], "expressions": {"0": {"exp": "a dog", "obj_id": "1"}}},
        "fine": {"frames": ["00000"], "expressions": {"b": {"exp": "a cat", "obj_id": "1"},
                                                      "1": {"exp": "a cow", "obj_id": "2"},
                                                      "../e": {"exp": "x", "obj_id": "1"}}}}}))
    problems = []
    videos = read_meta_expressions(meta, "train", problems)
    assert list(videos) == ["fine"]                                        # non-numeric ids sort after numeric ones
    assert [e.expression_id for e in videos["fine"][1]] == ["1", "b"]
    reasons = " ".join(p.reason for p in problems)
    assert "'../escape'" in reasons and "frame names" in reasons and "'../e'" in reasons

    root = tmp_path / "davis"
    write_synthetic_refer_davis(root, videos=2, seed=0, height=48, width=64, frames=4, progress=False)
    image_set = root / "DAVIS" / "ImageSets" / "2017" / "val.txt"
    image_set.write_text(image_set.read_text() + "../../escape\n")
    raw = read_refer_davis(root, "val")
    assert "../../escape" not in raw.sequences
    assert any("../../escape" == p.sequence and "not a plain" in p.reason for p in raw.problems)


def test_records_and_prediction_paths_refuse_escaping_ids(prepared, tmp_path):
    from losh.evaluation.predictions import mask_path

    line = (prepared / "samples.jsonl").read_text().splitlines()[0]
    record = json.loads(line)
    with pytest.raises(SchemaError, match="not a plain file name"):
        SampleRecord.from_dict({**record, "video_id": "../x"})
    with pytest.raises(SchemaError, match="shards/<video_id>.h5"):
        SampleRecord.from_dict({**record, "shard": "../../x.h5"})
    good = SampleRecord.from_dict(record)
    assert mask_path(tmp_path, good).parent.parent.parent == tmp_path


def test_one_undecodable_annotation_row_is_a_problem_naming_the_file_and_line(raw_copy, tmp_path):
    annotations = raw_copy / "text_annotations" / "a2d_annotation.txt"
    lines = annotations.read_bytes().splitlines()
    lines[3] = lines[3] + b" caf\xe9"                      # latin-1, not UTF-8
    annotations.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "prep"
    manifest = prepare_a2d(raw_copy, out, short_source="manual", settings=SETTINGS, workers=1, progress=False)
    problems = json.loads((out / "report.json").read_text())["problems"]
    assert any("a2d_annotation.txt line 4: not utf-8" in p["reason"] and "0xe9" in p["reason"] for p in problems)
    assert manifest["counts"]["samples"] > 0


# ----------------------------------------------------------------------------------------- resume

def test_a_finished_run_resumed_trains_nothing_and_changes_no_file(prepared, tmp_path):
    run = tmp_path / "run"
    train(prepared, CONFIG, run, _settings(max_steps=3), progress=False)
    before = _files(run)
    again = train(prepared, CONFIG, run, _settings(max_steps=3), resume=True, progress=False)
    assert again["nothing_to_train"] and again["steps"] == 3
    assert _files(run) == before
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(run), "--config", "tiny:wo-fbc",
                                      "--resume", "--max-steps", "3", "--workers", "0"])
    assert result.exit_code == 0 and "nothing to train" in result.output, result.output
    assert _files(run) == before


def test_resuming_mid_epoch_is_bit_identical(prepared, tmp_path):
    """A run stopped inside its first epoch (a mid-epoch checkpoint) and resumed ends with the weights of the run
    that never stopped: the same samples, in the same order, the same random numbers."""
    full = train(prepared, CONFIG, tmp_path / "full", _settings(deterministic=True), progress=False)
    train(prepared, CONFIG, tmp_path / "split", _settings(deterministic=True, max_steps=3), progress=False)
    mid = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert mid["epoch"] == 0 and mid["step_in_epoch"] == 3               # inside the first epoch
    resumed = train(prepared, CONFIG, tmp_path / "split", _settings(deterministic=True), resume=True, progress=False)
    assert resumed["steps"] == full["steps"]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    different = [k for k, v in a.items() if isinstance(v, torch.Tensor) and not torch.equal(v, b[k])]
    assert different == []


# ------------------------------------------------------------------------------------------ locks

def _plant_lock(folder: Path, pid: int, command: str = "losh train") -> None:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": command,
                                                "started": time.time()}))


def test_a_second_writer_is_refused_at_once_naming_the_first(prepared, tmp_path, live_process):
    run = tmp_path / "run"
    _plant_lock(run, live_process.pid)
    start = time.monotonic()
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(run), "--config", "tiny:wo-fbc",
                                      "--workers", "0", "--max-steps", "1"])
    assert result.exit_code == 1 and f"pid {live_process.pid}" in result.output and "being written" in result.output
    assert time.monotonic() - start < 30 and sorted(os.listdir(run)) == [LOCK_NAME]
    prep = tmp_path / "prep"
    _plant_lock(prep, live_process.pid, "losh prepare-data")
    with pytest.raises(FolderBusy, match="prepare-data"):
        prepare_a2d(prepared, prep, short_source="manual", settings=SETTINGS, workers=1, progress=False)
    from losh.pipeline.flows import compute_flows
    with pytest.raises(FolderBusy, match="being written"):   # flows of a PREP that prepare-data writes
        compute_flows(prep, workers=0, progress=False)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant_lock(tmp_path / "run", dead.pid)
    refuse_if_locked(tmp_path / "run", "a reader")                        # a dead writer holds nothing
    with folder_lock(tmp_path / "run", "losh train") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run" / LOCK_NAME).exists()                    # released


def test_two_trainings_started_together_one_runs_one_is_refused(prepared, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "losh.cli.main", "train", "--data", str(prepared), "--out", str(run), "--config",
               "tiny:wo-fbc", "--workers", "0", "--max-steps", "30", "--epochs", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (run / LOCK_NAME).exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert second.returncode == 1 and "being written by" in second.stderr + second.stdout
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [10, 20, 30]     # one writer's log, in order


# ------------------------------------------------------------------------------------- data faults

def test_a_damaged_shard_is_named_before_the_run_folder_exists_and_prepare_data_repairs_it(synth_root, tmp_path):
    prep = tmp_path / "prep"
    prepare_a2d(synth_root, prep, short_source="manual", settings=SETTINGS, workers=1, progress=False)
    shard = sorted((prep / "shards").glob("*.h5"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])                           # truncated
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(prep), "--out", str(run), "--config", "tiny:wo-fbc",
                                      "--workers", "0", "--max-steps", "1"])
    assert result.exit_code == 1 and shard.name in result.output and "prepare-data" in result.output
    assert not run.exists()
    prepare_a2d(synth_root, prep, short_source="manual", settings=SETTINGS, workers=1, progress=False)
    with h5py.File(shard, "r") as f:                                       # written again, whole
        assert f.attrs["schema"] == "losh.prepared"
    shard.unlink()
    result = CliRunner().invoke(app, ["evaluate", "--data", str(prep), "--checkpoint", "missing.pt"])
    assert result.exit_code == 1


def test_a_deleted_shard_gives_evaluation_its_name_and_the_repair(prepared, tmp_path):
    from losh.schemas.prepared_reader import PreparedDataset

    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    data = PreparedDataset(copy, "test")
    record = data.records[0]
    (copy / record.shard).unlink()
    with pytest.raises(SchemaError, match=rf"{record.video_id}\.h5: missing; re-run the same `losh prepare-data`"):
        data.read(record)


def test_a_damaged_flow_shard_is_named_before_training(prepared_with_flows, tmp_path):
    copy = tmp_path / "prep"
    shutil.copytree(prepared_with_flows, copy)
    flow = sorted((copy / "flows").glob("*.h5"))[0]
    flow.write_bytes(flow.read_bytes()[:500])
    result = CliRunner().invoke(app, ["train", "--data", str(copy), "--out", str(tmp_path / "run"), "--config",
                                      "tiny", "--workers", "0", "--max-steps", "1"])
    assert result.exit_code == 1 and flow.name in result.output and "compute-flows" in result.output
    assert not (tmp_path / "run").exists()


def test_a_broken_settings_file_is_named(prepared, tmp_path):
    settings = tmp_path / "train.json"
    settings.write_text("{not json")
    result = CliRunner().invoke(app, ["train", "--data", str(prepared), "--out", str(tmp_path / "run"),
                                      "--settings", str(settings)])
    assert result.exit_code == 1 and str(settings) in result.output


# ------------------------------------------------------------------------------------ left behind

def test_temporary_files_of_dead_processes_are_removed_on_the_next_run(prepared, tmp_path):
    run = tmp_path / "run"
    train(prepared, CONFIG, run, _settings(max_steps=1), progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stray = [run / "checkpoints" / f".last.pt.tmp-{dead.pid}", run / "checkpoints" / f".last.pt.tmp-{dead.pid}-ab12.pt"]
    for path in stray:
        path.write_bytes(b"partial")
    train(prepared, CONFIG, run, _settings(max_steps=2), resume=True, progress=False)
    assert not any(path.exists() for path in stray)


def _children(pid: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(name))
    return out


def test_prepare_datas_pool_workers_die_with_a_killed_parent(synth_root, tmp_path):
    script = (f"from losh.pipeline.prepare import PrepareSettings, prepare_a2d\n"
              f"prepare_a2d({str(synth_root)!r}, {str(tmp_path / 'prep')!r}, short_source='manual', "
              f"settings=PrepareSettings(window=8, short_side=64, max_long_side=88, codec='png'), workers=2, "
              f"progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline, workers = time.monotonic() + 60, set()
    while time.monotonic() < deadline and len(workers) < 2 and parent.poll() is None:
        workers = _children(parent.pid)
        time.sleep(0.05)
    if parent.poll() is not None:
        pytest.skip("prepare-data finished before its workers could be seen")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text()
             .rsplit(")", 1)[1].split()[0]]
    assert alive == []


def test_dask_scratch_space_is_private_to_the_run(prepared, tmp_path, monkeypatch):
    import losh.pipeline.flows as flows

    seen = []
    real = flows.start_local_cluster

    def spy(workers, scratch=None):
        seen.append((scratch, oct(os.stat(scratch).st_mode & 0o777)))
        return real(workers, scratch)

    monkeypatch.setattr(flows, "start_local_cluster", spy)
    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    flows.compute_flows(copy, workers=1, progress=False)
    (scratch, mode), = seen
    assert "losh-dask-" in scratch and mode == "0o700" and not Path(scratch).exists()


def test_prepare_dataset_api_keeps_its_lock_for_the_whole_run(synth_root, tmp_path, monkeypatch):
    import losh.pipeline.prepare as prepare

    held = []
    real = prepare._prepare_dataset
    monkeypatch.setattr(prepare, "_prepare_dataset",
                        lambda *a, **k: held.append((tmp_path / "prep" / LOCK_NAME).exists()) or real(*a, **k))
    prepare_dataset("a2d", synth_root, tmp_path / "prep", short_source="manual", settings=SETTINGS, workers=1,
                    progress=False)
    assert held == [True] and not (tmp_path / "prep" / LOCK_NAME).exists()
