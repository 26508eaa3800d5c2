import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from distributed import Client
from typer.testing import CliRunner

from losh.cli.main import app
from losh.pipeline.flow_field import farneback, gray_from_bgr, hflip_flows, to_grid
from losh.pipeline.flow_verify import verify_flows
from losh.pipeline.flows import compute_flows
from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.schemas.flow_reader import FlowReader, FlowsMissing
from losh.schemas.flows import FlowParams
from losh.schemas.prepared import SchemaError
from losh.schemas.prepared_reader import PreparedDataset

REPO = Path(__file__).resolve().parents[1]
VIDEO_FRAMES = 16   # the synth_root fixture's clips
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def visible_shards(folder: Path) -> list[Path]:
    """The shards a reader sees: a writer's hidden temporary (`.NAME.tmp-PID-x.h5`) also ends in .h5."""
    return [p for p in folder.glob("*.h5") if not p.name.startswith(".")]


def prepare(root, out, window=8, overwrite=False):
    return prepare_a2d(root, out, short_source="manual", settings=PrepareSettings(window=window, short_side=64,
                       max_long_side=88), workers=1, progress=False, overwrite=overwrite)


@pytest.fixture(scope="module")
def prep_flows(synth_root, tmp_path_factory) -> Path:
    """PREP of the synthetic set with default flows from a 2-worker local Dask cluster (read-only)."""
    prep = tmp_path_factory.mktemp("flows") / "prep"
    prepare(synth_root, prep)
    run = compute_flows(prep, workers=2, progress=False)
    assert len(run.computed) == 5 and not run.resumed
    return prep


def copy_prep(prep: Path, dst: Path, with_flows: bool) -> Path:
    shutil.copytree(prep, dst, ignore=None if with_flows else shutil.ignore_patterns("flows"))
    return dst


def cv2_flow(rgb_k: np.ndarray, rgb_t: np.ndarray) -> np.ndarray:
    """The documented recipe, written out independently of pipeline/."""
    gray_k, gray_t = cv2.cvtColor(rgb_k, cv2.COLOR_RGB2GRAY), cv2.cvtColor(rgb_t, cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(gray_k, gray_t, None, **FARNEBACK)


def annotated_frames(prep: Path):
    ds = PreparedDataset(prep)
    seen = {}
    for r in ds.records:
        seen.setdefault((r.video_id, r.frame), r)
    return ds, list(seen.values())


def shard_arrays(path: Path) -> dict:
    with h5py.File(path) as f:
        return {name: f[name][()] for name in ("frames", "targets", "valid", "flows")}


def assert_same_flow_shards(prep_a: Path, prep_b: Path) -> None:
    names = sorted(p.name for p in (prep_a / "flows").glob("*.h5"))
    assert names == sorted(p.name for p in (prep_b / "flows").glob("*.h5")) and len(names) == 5
    for name in names:
        a, b = shard_arrays(prep_a / "flows" / name), shard_arrays(prep_b / "flows" / name)
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), (name, key)


def test_stored_flows_equal_cv2_resized_to_stride_4(prep_flows):
    ds, records = annotated_frames(prep_flows)
    reader = FlowReader(prep_flows)
    assert reader.offsets == (-2, -1, 1, 2) and reader.stride == 4
    index = json.loads((prep_flows / "flows/index.json").read_text())
    assert index["counts"]["annotated_frames"] == len(records) == 10
    invalid = 0
    for r in records:
        flows, valid = reader.read(r.video_id, r.frame)
        assert flows.shape == (4, 2, 16, 22) and flows.dtype == np.float32 and valid.dtype == bool
        targets = [min(max(r.frame + t, 1), VIDEO_FRAMES) for t in (-2, -1, 1, 2)]
        assert valid.tolist() == [1 <= r.frame + t <= VIDEO_FRAMES for t in (-2, -1, 1, 2)]
        invalid += int((~valid).sum())
        frames = ds.read_frames(r, [r.frame, *targets])
        for o, target_rgb in enumerate(frames[1:]):
            full = cv2_flow(frames[0], target_rgb)
            expected = cv2.resize(full, (22, 16), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 4
            # the default storage rounds to multiples of 1/64 grid pixel (exact in float16 below 32 px)
            assert (flows[o] * 64 == np.rint(flows[o] * 64)).all()
            assert np.abs(flows[o] - expected).max() <= 1 / 128 + 1e-6
            assert np.abs(expected).max() > 0.05   # the moving shapes give non-trivial flows
    assert invalid == 2   # two annotated frames sit one frame from a video end: one clamped offset each
    copy = pickle.loads(pickle.dumps(reader))   # what a spawned DataLoader worker gets: no open handles
    assert len(copy.files) == 0 and (copy.read(r.video_id, r.frame)[0] == flows).all()


@pytest.mark.parametrize("dtype,compression,stride,quant_step", [
    ("float16", "none", 1, None), ("float32", "lzf", 1, None), ("float16", "lzf", 4, None),
    ("float16", "shuffle+gzip-1", 4, 1 / 32)])
def test_stored_values_round_as_documented(prep_flows, tmp_path, dtype, compression, stride, quant_step):
    prep = copy_prep(prep_flows, tmp_path / "prep", with_flows=False)
    params = FlowParams(stride=stride, dtype=dtype, compression=compression, quant_step=quant_step)
    compute_flows(prep, params, workers=0, progress=False)
    ds, records = annotated_frames(prep)
    reader = FlowReader(prep, expect=params)
    for r in records[:4]:
        flows, _ = reader.read(r.video_id, r.frame)
        targets = [min(max(r.frame + t, 1), VIDEO_FRAMES) for t in (-2, -1, 1, 2)]
        frames = ds.read_frames(r, [r.frame, *targets])
        for o, target_rgb in enumerate(frames[1:]):
            expected = cv2_flow(frames[0], target_rgb)
            if stride == 4:
                expected = cv2.resize(expected, (22, 16), interpolation=cv2.INTER_AREA) / 4
            expected = expected.transpose(2, 0, 1)
            error = np.abs(flows[o] - expected)
            if dtype == "float32":
                assert (error == 0).all()
            elif quant_step is None:   # float16: half an ulp
                assert (error <= np.abs(expected) * 2.0 ** -11 + 2.0 ** -25).all()
            else:   # multiples of 1/32 (exact in float16 below 64 grid pixels): half a step
                assert (flows[o] * 32 == np.rint(flows[o] * 32)).all()
                assert (error <= 1 / 64 + 1e-6).all() and error.max() > 1 / 128
    with h5py.File(prep / "flows" / f"{records[0].video_id}.h5") as f:
        assert f["flows"].dtype == np.dtype(dtype) and f.attrs["compression"] == compression
        assert json.loads(f.attrs["params"])["stride"] == stride and f.attrs["units"] == "pixels of the stored grid"


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture: features of ~4 px, still resolved on the stride-4 grid."""
    noise = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 4.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return cv2.cvtColor((smooth * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def warp_with_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` (h, w) at (x + flow[0], y + flow[1]): the grid_sample recipe for L_fbc.

    align_corners=False, pixel i's centre at normalised (2 i + 1) / w - 1, so
    grid_x = (2 (x + flow_x) + 1) / w - 1 and grid_y = (2 (y + flow_y) + 1) / h - 1.
    """
    h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    f = torch.from_numpy(flow)
    grid = torch.stack(((2 * (xs + f[0]) + 1) / w - 1, (2 * (ys + f[1]) + 1) / h - 1), dim=-1)[None]
    src = torch.from_numpy(image.astype(np.float32))[None, None]
    return torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)[0, 0].numpy()


def test_shift_gives_the_sign_convention_for_warping_with_grid_sample():
    frame_k = textured_image(64, 96)
    frame_next = np.roll(frame_k, 3, axis=1)   # content moves +3 px in x: next(y, x) = k(y, x - 3)
    gray_k, gray_next = gray_from_bgr(frame_k), gray_from_bgr(frame_next)
    flow = farneback(gray_k, gray_next).transpose(2, 0, 1)
    inner = (slice(12, -12), slice(12, -12))
    assert np.abs(flow[0][inner] - 3).max() < 0.2 and np.abs(flow[1][inner]).max() < 0.2
    warped = warp_with_flow(gray_next, flow)
    unwarped_error = np.abs(gray_next.astype(np.float32) - gray_k)[inner].mean()
    assert np.abs(warped - gray_k)[inner].mean() < 0.1 * unwarped_error
    assert np.abs(warp_with_flow(gray_next, -flow) - gray_k)[inner].mean() > 0.9 * unwarped_error   # wrong sign
    # at stride 4 the same holds for the stored grid flow and area-downsampled frames (the features' level)
    grid_flow = to_grid(farneback(gray_k, gray_next), (16, 24))
    assert np.abs(grid_flow[0][3:-3, 3:-3] - 0.75).max() < 0.06
    small_k, small_next = (cv2.resize(g, (24, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
                           for g in (gray_k, gray_next))
    inner_small = (slice(3, -3), slice(3, -3))
    assert np.abs(warp_with_flow(small_next, grid_flow) - small_k)[inner_small].mean() < \
        0.2 * np.abs(small_next - small_k)[inner_small].mean()


def test_grid_of_a_size_not_divisible_by_the_stride_scales_each_axis():
    params = FlowParams(stride=4)
    assert params.grid(66, 90) == (17, 23) and params.grid(64, 88) == (16, 22)
    uniform = np.empty((66, 90, 2), np.float32)
    uniform[..., 0], uniform[..., 1] = 4.0, 2.0   # every pixel moves 4 px right, 2 px down
    grid = to_grid(uniform, params.grid(66, 90))
    assert grid.shape == (2, 17, 23)
    assert np.allclose(grid[0], 4.0 * 23 / 90) and np.allclose(grid[1], 2.0 * 17 / 66)


def test_hflip_of_flows_matches_the_flows_of_mirrored_frames():
    frame_k = textured_image(64, 96, seed=1)
    frame_next = np.roll(np.roll(frame_k, 3, axis=1), -2, axis=0)
    grays = [gray_from_bgr(f) for f in (frame_k, frame_next)]
    flow = to_grid(farneback(*grays), (16, 24))
    mirrored = to_grid(farneback(*(g[:, ::-1].copy() for g in grays)), (16, 24))
    flipped = hflip_flows(flow[None])[0]
    assert np.abs(mirrored[0][4:-4, 4:-4] + 0.75).max() < 0.06   # mirrored content moves -3 px
    assert np.abs(flipped - mirrored)[:, 4:-4, 4:-4].max() < 0.06


SLOW_RUN = """
import sys, time
import losh.pipeline.flows as flows
original = flows.compute_video_flows
def slow(job):   # defined in __main__, so Dask ships it to the workers by value
    result = original(job)
    time.sleep(0.6)
    return result
flows.compute_video_flows = slow
flows.compute_flows(sys.argv[1], workers=1, progress=False)
"""


def test_killed_run_leaves_complete_shards_and_a_rerun_finishes_and_verifies(prep_flows, tmp_path):
    prep = copy_prep(prep_flows, tmp_path / "prep", with_flows=False)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(prep)], cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and not visible_shards(prep / "flows"):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shards = sorted(p.name for p in visible_shards(prep / "flows"))
    assert 1 <= len(shards) < 5 and not (prep / "flows/index.json").exists()
    for shard in shards:   # every visible shard is complete
        assert shard_arrays(prep / "flows" / shard)["flows"].shape[1:] == (4, 2, 16, 22)
    run = compute_flows(prep, workers=1, progress=False)
    assert [f"{v}.h5" for v in run.resumed] == shards and len(run.computed) == 5 - len(shards)
    assert not list((prep / "flows").glob(".*tmp*"))
    assert_same_flow_shards(prep, prep_flows)
    result = CliRunner().invoke(app, ["compute-flows", str(prep), "--verify", "--verify-samples", "100"])
    assert result.exit_code == 0, result.output
    assert "5 shards, 10 annotated frames, 10 recomputed" in result.output


def test_separate_dask_scheduler_and_worker_give_the_local_clusters_shards(prep_flows, tmp_path):
    prep = copy_prep(prep_flows, tmp_path / "prep", with_flows=False)
    dask = Path(sys.executable).with_name("dask")
    scheduler_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(dask), "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file",
                               str(scheduler_file)], cwd=tmp_path, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not scheduler_file.exists():
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(subprocess.Popen([str(dask), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard"], cwd=tmp_path, stderr=subprocess.DEVNULL))
        result = CliRunner().invoke(app, ["compute-flows", str(prep), "--split", "all", "--no-progress"],
                                    env={"LOSH_DASK_SCHEDULER": address})
        assert result.exit_code == 0, result.output
        assert "5 videos computed, 0 kept" in result.output
        with Client(address) as client:   # the separately started scheduler ran them (a lambda: sent by value)
            finished = client.run_on_scheduler(lambda dask_scheduler: dict(
                dask_scheduler.task_prefixes["losh-flows"].state_counts)["memory"])
            assert finished == 5
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
    assert_same_flow_shards(prep, prep_flows)


def test_changed_parameters_or_prep_are_recomputed_never_mixed(prep_flows, synth_root, tmp_path):
    prep = copy_prep(prep_flows, tmp_path / "prep", with_flows=True)
    old_index = (prep / "flows/index.json").read_text()
    videos = sorted(e["video_id"] for e in json.loads(old_index)["videos"])
    assert compute_flows(prep, workers=0, progress=False).resumed == videos   # same parameters: nothing to do
    coarse = FlowParams(stride=8)
    run = compute_flows(prep, coarse, workers=0, progress=False)
    assert run.computed == videos and not run.resumed
    record = annotated_frames(prep)[1][0]
    assert FlowReader(prep, expect=coarse).read(record.video_id, record.frame)[0].shape == (4, 2, 8, 11)
    with pytest.raises(SchemaError, match="computed with"):
        FlowReader(prep, expect=FlowParams())
    # an index that does not describe the shards is caught when a shard is opened, and by --verify
    (prep / "flows/index.json").write_text(old_index)
    reader = FlowReader(prep)
    with pytest.raises(SchemaError, match="other parameters"):
        reader.read(record.video_id, record.frame)
    assert any("other parameters" in p for p in verify_flows(prep).problems)
    # re-preparing PREP with other settings (--overwrite) replaces the flows of every video
    compute_flows(prep, workers=0, progress=False)
    prepare(synth_root, prep, window=6, overwrite=True)
    run = compute_flows(prep, workers=0, progress=False)
    assert len(run.computed) == 5 and verify_flows(prep, samples=3).ok


def test_verify_detects_corrupted_missing_and_stale_shards(prep_flows, tmp_path):
    assert verify_flows(prep_flows, samples=100).ok
    _, records = annotated_frames(prep_flows)
    vid = records[0].video_id
    cases = {}
    for case in ("value", "nan", "truncated", "missing"):
        prep = copy_prep(prep_flows, tmp_path / case, with_flows=True)
        shard = prep / "flows" / f"{vid}.h5"
        if case == "value":
            with h5py.File(shard, "r+") as f:
                f["flows"][0, 1, 0, 5, 5] += 0.5
        elif case == "nan":
            with h5py.File(shard, "r+") as f:
                f["flows"][1, 0, 1, 2, 3] = np.nan
        elif case == "truncated":
            shard.write_bytes(shard.read_bytes()[:3000])
        else:
            shard.unlink()
        cases[case] = verify_flows(prep, samples=100).problems
    assert any(f"{vid} frame {records[0].frame}: 1 stored flow values differ" in p for p in cases["value"])
    assert any("1 flow values are not finite" in p for p in cases["nan"])
    assert any("unreadable" in p for p in cases["truncated"])
    assert any("missing" in p for p in cases["missing"])
    result = CliRunner().invoke(app, ["compute-flows", str(tmp_path / "value"), "--verify", "--verify-samples", "100"])
    assert result.exit_code == 1 and "failed verification: 1 problems" in result.output
    # a frame PREP annotates but the index does not cover
    prep = copy_prep(prep_flows, tmp_path / "uncovered", with_flows=True)
    index = json.loads((prep / "flows/index.json").read_text())
    index["videos"] = index["videos"][1:]
    (prep / "flows/index.json").write_text(json.dumps(index))
    assert any("does not cover video" in p for p in verify_flows(prep).problems)


def test_missing_flows_and_too_short_windows_give_clear_errors(prep_flows, synth_root, tmp_path):
    prep = copy_prep(prep_flows, tmp_path / "prep", with_flows=False)
    with pytest.raises(FlowsMissing, match="run `losh compute-flows"):
        FlowReader(prep)
    reader = FlowReader(prep_flows)
    record = annotated_frames(prep_flows)[1][0]
    with pytest.raises(FlowsMissing, match=f"frame {record.frame + 1}"):
        reader.read(record.video_id, record.frame + 1)
    short = tmp_path / "short"
    prepare(synth_root, short, window=4)   # stores k-2..k+1: no k+2
    result = CliRunner().invoke(app, ["compute-flows", str(short), "--workers", "0"])
    assert result.exit_code == 1 and "offset +2 needs frame k+2" in result.output and ">= 5" in result.output
    result = CliRunner().invoke(app, ["compute-flows", str(short), "--workers", "0", "--offsets=-2,-1,1",
                                      "--compression", "shuffle+lzf"])
    assert result.exit_code == 0, result.output
    assert FlowReader(short).read(record.video_id, record.frame)[0].shape == (3, 2, 16, 22)
    result = CliRunner().invoke(app, ["compute-flows", str(short), "--compression", "zip"])
    assert result.exit_code == 2 and "unknown compression" in result.output
