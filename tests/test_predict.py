"""`losh predict`: a synthetic video and a folder of frames through the tiny model; streaming; bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import losh.inference.drawing as ld
import losh.inference.frames as lf
import losh.inference.predict as lp
from losh.cli.main import app
from losh.inference.video_inference import video_windows
from losh.models.registry import build_model
from losh.pipeline.video import write_h264
from losh.schemas.presets import get_config
from losh.training.checkpoint import CHECKPOINT_SCHEMA, CHECKPOINT_VERSION, atomic_save

H, W = 64, 88                     # the video's size
RESOLUTION = {"short_side": 48, "max_long_side": 66}   # the checkpoint's training frames: input 48 x 66
TEXTS = ["the red circle moving right", "a blue square"]


def moving_shapes(frames: int, h: int = H, w: int = W) -> np.ndarray:
    """(T, h, w, 3) RGB: a red disc moving right and a blue square moving down on grey; frame t's top-left
    pixel row encodes t (to check the order of folder frames)."""
    out = np.full((frames, h, w, 3), 90, dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for t in range(frames):
        cx = 8 + (w - 16) * t / max(frames - 1, 1)
        out[t][(yy - h / 3) ** 2 + (xx - cx) ** 2 < (h / 6) ** 2] = (220, 30, 30)
        top = int(4 + (h / 2) * t / max(frames - 1, 1))
        out[t, top:top + h // 4, w // 2:w // 2 + h // 4] = (30, 30, 220)
    return out


def write_video(path: Path, frames: np.ndarray, fps: int = 24) -> Path:
    return write_h264(path, frames, fps)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A freshly built tiny model saved in the training checkpoint format (with its data preparation)."""
    torch.manual_seed(0)
    config = get_config("tiny")
    model = build_model(config)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    atomic_save({"schema": CHECKPOINT_SCHEMA, "version": CHECKPOINT_VERSION, "model_config": config.to_dict(),
                 "model": model.state_dict(), "model_ema": None,
                 "data_preparation": {"dataset": "synthetic", "window": config.window, "resolution": RESOLUTION}},
                path)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "shapes.mp4", moving_shapes(24))


def read_back(path: Path) -> tuple[int, str, str, tuple[int, int], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return (frames, stream.codec_context.name, stream.codec_context.pix_fmt,
                (stream.codec_context.height, stream.codec_context.width), float(stream.average_rate))


def test_natural_sort_and_slugs():
    names = ["10.png", "2.png", "1.png", "frame_b.png", "Frame_a.png"]
    assert sorted(names, key=lf.natural_key) == ["1.png", "2.png", "10.png", "Frame_a.png", "frame_b.png"]
    used: set[str] = set()
    assert [lp.slugify(t, used) for t in ["The man in RED!", "the man in red", "???", "café au lait"]] == \
        ["the-man-in-red", "the-man-in-red-2", "expression", "cafe-au-lait"]


def test_video_through_predict(checkpoint, video, tmp_path):
    out = tmp_path / "out"
    report = lp.predict(checkpoint, video, TEXTS, out, device="cpu")
    assert json.loads((out / "predictions.json").read_text()) == report
    assert report["frames"] == 24 and report["size"] == [H, W] and report["input_size"] == [48, 66]
    assert report["model"] == "tiny" and report["window"] == 8 and report["resolution"]["source"] == "checkpoint"
    assert report["frame_ids"] == list(range(24)) and report["fps"] == 24
    q = get_config("tiny").transformer.num_queries
    for e, text in zip(report["expressions"], TEXTS):
        assert e["text"] == text and e["short_text"] and 0 <= e["query"] < q and 0 < e["score"] <= 1
        masks = sorted((out / e["masks"]).iterdir())
        assert [p.name for p in masks] == [f"{t:05d}.png" for t in range(24)]      # one mask per frame
        for p in masks[::7]:
            mask = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}
    assert [e["masks"] for e in report["expressions"]] == ["the-red-circle-moving-right", "a-blue-square"]
    t = report["timings"]
    assert all(t[k] >= 0 for k in ("load_s", "count_s", "inference_s", "masks_s", "overlay_s", "total_s"))
    frames, codec, pix_fmt, size, fps = read_back(out / "overlay.mp4")
    # a small frame: the legend goes on a strip below it instead of hiding a quarter of it
    legend_h = ld.legend_patch(TEXTS, [(255, 0, 0)] * 2, W).shape[0]
    assert legend_h > H // 4 and (frames, codec, pix_fmt, fps) == (24, "h264", "yuv420p", 24.0)
    assert size == (H + legend_h + (H + legend_h) % 2, W)
    data = (out / "overlay.mp4").read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")                                   # faststart: streams in browsers
    from PIL import Image
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == report["overlay"]["preview_frames"] == 24 and gif.size == (W, H + legend_h)
    assert not list(tmp_path.glob(".out.*"))                                         # no staging folder left


def test_folder_of_frames_sorted_naturally_odd_size(checkpoint, tmp_path):
    frames = moving_shapes(12, 45, 61)                                                # odd: the MP4 is padded
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"{t}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not a frame")
    source = lf.FolderFrames(folder, **RESOLUTION)
    assert [p.name for p in source.files] == [f"{t}.png" for t in range(1, 13)]
    assert np.array_equal(dict(source.originals())[9], frames[9])                    # 10.png is the 10th frame
    report = lp.predict(checkpoint, folder, TEXTS[:1], tmp_path / "out", device="cpu")
    assert report["frame_files"] == [f"{t}.png" for t in range(1, 13)] and report["size"] == [45, 61]
    masks = sorted((tmp_path / "out" / report["expressions"][0]["masks"]).iterdir())
    assert len(masks) == 12 and cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE).shape == (45, 61)
    legend_h = ld.legend_patch(TEXTS[:1], [(255, 0, 0)], 61).shape[0]
    height = 45 + (legend_h if legend_h > 45 // 4 else 0)
    assert read_back(tmp_path / "out" / "overlay.mp4")[:4] == (12, "h264", "yuv420p", (height + height % 2, 62))


def test_fps_halves_a_double_rate_video(checkpoint, video, tmp_path):
    report = lp.predict(checkpoint, video, TEXTS[:1], tmp_path / "out", fps=12, device="cpu")
    assert report["frames"] == 12 and report["frame_ids"] == list(range(0, 24, 2)) and report["fps"] == 12
    names = sorted(p.name for p in (tmp_path / "out" / report["expressions"][0]["masks"]).iterdir())
    assert names == [f"{t:05d}.png" for t in range(0, 24, 2)]                        # named by the video's frames
    assert read_back(tmp_path / "out" / "overlay.mp4")[0] == 12


def test_streaming_keeps_a_bounded_number_of_frames(checkpoint, tmp_path, monkeypatch):
    frames = moving_shapes(300, 32, 48)
    path = write_video(tmp_path / "long.mp4", frames)
    window = 8
    # the reads of predict_video (MTTR's windows; the last re-reads frames) are served from a small ring
    source = lf.VideoFileFrames(path, short_side=32, max_long_side=48, history=window)
    with av.open(str(path)) as c:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert len(source) == 300 and source.passes == 1
    for start, stop, _ in video_windows(300, 7):                                     # 300 = 42 x 7 + 6
        assert np.array_equal(source.read(list(range(start, stop))), reference[start:stop])
    assert source.passes == 2 and source.peak_held <= window                         # one sequential decode
    # the whole command (on 100 of the frames: the tiny model takes ~0.4 s a window on 2 CPU cores)
    path = write_video(tmp_path / "longer.mp4", frames[:100])
    seen = []
    real = lf.open_frames
    monkeypatch.setattr(lp, "open_frames", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    report = lp.predict(checkpoint, path, TEXTS[:1], tmp_path / "out", device="cpu", short_side=32,
                        max_long_side=48, overlay=False)
    assert report["frames"] == 100 and report["overlay"] is None
    assert len(list((tmp_path / "out" / report["expressions"][0]["masks"]).iterdir())) == 100
    assert seen[0].peak_held <= window and seen[0].passes == 2                       # count + decode, no restart


def _cli(args: list[str]):
    return CliRunner().invoke(app, ["predict", *args])


def test_bad_inputs_fail_cleanly_with_nothing_left(checkpoint, video, tmp_path):
    out = tmp_path / "out"
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    not_ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, not_ckpt)
    text_ckpt = tmp_path / "notes.pt"
    text_ckpt.write_text("hello")
    cases = [
        (["--checkpoint", checkpoint, "--video", tmp_path / "missing.mp4", "--text", "x"], 1, "no video"),
        (["--checkpoint", checkpoint, "--video", fake, "--text", "x"], 1, "cannot read video"),
        (["--checkpoint", checkpoint, "--video", empty, "--text", "x"], 1, "no frames in"),
        (["--checkpoint", checkpoint, "--video", video], 2, "expression"),
        (["--checkpoint", not_ckpt, "--video", video, "--text", "x"], 1, "not a losh.checkpoint"),
        (["--checkpoint", text_ckpt, "--video", video, "--text", "x"], 1, "not a losh.checkpoint"),
        (["--checkpoint", checkpoint, "--video", empty, "--text", "x", "--fps", "5"], 2, "--fps"),
    ]
    for args, code, message in cases:
        result = _cli([str(a) for a in args] + ["--out", str(out), "--no-progress"])
        assert result.exit_code == code, (args, result.output, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.stderr)
        assert not out.exists()
        assert not list(tmp_path.glob(".out.*"))
    # an existing non-empty folder is kept unless --overwrite
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _cli(["--checkpoint", str(checkpoint), "--video", str(video), "--text", "x", "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.stderr and (out / "keep.txt").exists()


def test_cli_writes_outputs_and_an_error_midway_leaves_nothing(checkpoint, video, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = _cli(["--checkpoint", str(checkpoint), "--video", str(video), "--text", "the red circle",
                   "--out", str(out), "--no-video", "--overwrite", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output + result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "the-red-circle"]   # replaced, no video
    assert "24 frames" in result.stdout

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lp, "write_preview", broken)
    other = tmp_path / "other"
    result = _cli(["--checkpoint", str(checkpoint), "--video", str(video), "--text", "x", "--out", str(other),
                   "--no-progress"])
    assert result.exit_code == 1 and "disk full" in result.stderr
    assert not other.exists() and not list(tmp_path.glob(".other.*"))
