"""`losh predict` end to end (losh/inference/predict.py): decode + inference + masks + overlay, frames per second.

`python -m bench.predict` prints one JSON object, `predict_fps`:
    value       frames per second of the whole `predict` call with `tiny` (random init, saved as a checkpoint
                whose training frames were 160 x 288) on this CPU: a 48-frame synthetic H.264 MP4 at
                360 x 648, 2 expressions, masks written at 360 x 648, the overlay MP4 and GIF preview
    seconds     the split of that time: load (checkpoint + model), count (first decoding pass), short_text
                (the tagger's short texts), inference
                (second decoding pass + resize + model + float16 logits), masks (post-processing + PNGs),
                overlay (third decoding pass + drawing + H.264 encoding + GIF), total
    losh_m      the paper's model (random init, no download) at 320 x 576 (the same video, resized as A2D's
                320 / 576) with bf16 on CUDA, end to end the same way; on a machine without CUDA, why not
One timed run after a short warm-up (the machine is shared; the run is kept under a minute).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from bench.video_inference import synthetic_video
from losh.inference.predict import predict
from losh.models.registry import build_model
from losh.pipeline.video import write_h264
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config
from losh.training.checkpoint import CHECKPOINT_SCHEMA, CHECKPOINT_VERSION, atomic_save

FRAMES, THREADS, FPS = 48, 2, 24
VIDEO_SIZE = (360, 648)              # resized to 160 x 288 (tiny) and 320 x 576 (losh-m, A2D's setting)
TINY_RESOLUTION = {"short_side": 160, "max_long_side": 288}
PAPER_RESOLUTION = {"short_side": 320, "max_long_side": 576}
TEXTS = ["the brown dog is running on grass to the left", "a man in a red shirt throwing a ball"]


def write_video(path: Path, frames, fps: int = FPS) -> Path:
    return write_h264(path, frames, fps, crf=20)


def save_checkpoint(spec: str, resolution: dict, path: Path) -> Path:
    """A randomly initialised model of `spec` in the training checkpoint format (nothing downloaded)."""
    from bench.train_step import NO_DOWNLOAD

    torch.manual_seed(0)
    config = with_overrides(get_config(spec), NO_DOWNLOAD)
    model = build_model(config)
    atomic_save({"schema": CHECKPOINT_SCHEMA, "version": CHECKPOINT_VERSION, "model_config": config.to_dict(),
                 "model": model.state_dict(), "model_ema": None,
                 "data_preparation": {"dataset": "synthetic", "window": config.window, "resolution": resolution}},
                path)
    return path


def run_predict(checkpoint: Path, video: Path, out: Path, device: str, amp: str) -> dict:
    report = predict(checkpoint, video, TEXTS, out, device=device, amp=amp, overwrite=True)
    seconds = {k.removesuffix("_s"): v for k, v in report["timings"].items() if k.endswith("_s") and k != "frames_per_s"}
    total = seconds["total"]
    return {"fps": round(report["frames"] / total, 2), "frames": report["frames"],
            "video": "x".join(map(str, report["size"])), "input": "x".join(map(str, report["input_size"])),
            "window": report["window"], "seconds": seconds,
            "share": {k: round(v / total, 3) for k, v in seconds.items() if k != "total"},
            "overlay_codec": report["overlay"]["codec"], "chosen_query": [e["query"] for e in report["expressions"]]}


def measure(spec: str, resolution: dict, device: str, amp: str, frames: int = FRAMES) -> dict:
    """`predict` of `spec` end to end on a synthetic video: a warm-up on a few frames, then one timed run."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = save_checkpoint(spec, resolution, tmp / f"{spec}.pt")
        video = synthetic_video(frames, VIDEO_SIZE)
        warm = write_video(tmp / "warm.mp4", video[:8])          # one full window
        clip = write_video(tmp / "clip.mp4", video)
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        predict(checkpoint, warm, TEXTS, tmp / "warm", device=device, amp=amp, overlay=False)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        out = run_predict(checkpoint, clip, tmp / "out", device, amp)
        if device.startswith("cuda"):
            out.update(device=torch.cuda.get_device_name(), amp=amp,
                       peak_cuda_mib=round(torch.cuda.max_memory_allocated() / 2**20))
        return out


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    tiny = measure("tiny", TINY_RESOLUTION, "cpu", "off")
    if torch.cuda.is_available():
        losh_m = measure("losh-m", PAPER_RESOLUTION, "cuda", "bf16", frames=96)
    else:
        losh_m = {"absent": "no CUDA device on this machine: losh-m at 320x576 is timed only on CUDA (bf16); "
                            "a CPU run of the paper model would say nothing about its real speed"}
    print(json.dumps({
        "bench": "predict_fps", "value": tiny["fps"], "unit": "frames/s", "target": None,
        "model": "tiny", "device": "cpu", "threads": THREADS, "expressions": len(TEXTS), **tiny,
        "losh_m": losh_m, "bench_seconds": round(time.perf_counter() - start, 1),
        "note": "random weights; end to end: decode, resize, model, masks at the video size, overlay MP4 + GIF",
    }), flush=True)


if __name__ == "__main__":
    main()
