"""Whole-video inference speed (`losh/inference/video_inference.py`), and whether the frame loader keeps up.

`python -m bench.video_inference` prints one JSON object, `video_inference_fps`:
    value               frames per second of `predict_video` with `tiny` (random init) on this CPU: a
                        48-frame synthetic video at 160 x 288, windows of 8, 2 expressions, frames read from
                        JPEG files by the prefetching reader (the whole call: reading, model, float16 logits)
    model_only_fps      the same from frames in memory (no decoding)
    masks_fps           streaming the full-size masks of both expressions at the original size 360 x 640
    loader_fps          reading + JPEG-decoding frames alone (schemas/frame_codec.py, one thread)
    loader_keeps_up     loader_fps >= model_only_fps (the reader runs in a thread alongside the model)
    losh_m              the paper's model (random init, no download) at 320 x 576 with bf16 on CUDA; on a
                        machine without CUDA, why it is absent
Best of REPEATS runs after a warm-up (the machine is shared).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from losh.inference.video_inference import ArrayFrames, predict_video
from losh.models.registry import build_model
from losh.schemas.config import with_overrides
from losh.schemas.frame_codec import decode_frame, encode_frame
from losh.schemas.presets import get_config

FRAMES, WINDOW, THREADS, REPEATS = 48, 8, 2, 2
TINY_SIZE, ORIGINAL_SIZE, PAPER_SIZE = (160, 288), (360, 640), (320, 576)
LONG = ["the brown dog is running on grass to the left", "a man in a red shirt throwing a ball"]
SHORT = ["the brown dog", "a man"]


class JpegFrames:
    """A FrameSource over a folder of JPEG files (one per frame, at the input size): read + decode."""

    def __init__(self, paths: list[Path], size: tuple[int, int]) -> None:
        self.paths, self._size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def read(self, indices: list[int]) -> np.ndarray:
        return np.stack([cv2.cvtColor(decode_frame(np.fromfile(self.paths[i], dtype=np.uint8)), cv2.COLOR_BGR2RGB)
                         for i in indices])


def synthetic_video(frames: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Moving discs on a smooth background (JPEG-compressible like real video, unlike noise)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1).astype(np.uint8)
    out = np.empty((frames, h, w, 3), dtype=np.uint8)
    centres = rng.uniform(0, 1, (3, 2)) * (h, w)
    speeds = rng.uniform(-3, 3, (3, 2))
    for t in range(frames):
        frame = base.copy()
        for k, (cy, cx) in enumerate(centres + t * speeds):
            frame[(yy - cy) ** 2 + (xx - cx) ** 2 < (h / 8) ** 2] = (60 * k + 40, 200 - 50 * k, 90)
        out[t] = frame
    return out


def write_jpegs(frames: np.ndarray, folder: Path) -> list[Path]:
    paths = []
    for t, frame in enumerate(frames):
        path = folder / f"{t:05d}.jpg"
        encode_frame(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)).tofile(path)
        paths.append(path)
    return paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_predict(model, source, device: torch.device, amp: str) -> tuple[float, object]:
    """Best seconds of `predict_video` over REPEATS runs, after a one-window warm-up."""
    predict_video(model, ArrayFrames(source.read(list(range(WINDOW)))), LONG, SHORT, window=WINDOW, amp=amp)
    best, prediction = float("inf"), None
    for _ in range(REPEATS):
        _sync(device)
        start = time.perf_counter()
        prediction = predict_video(model, source, LONG, SHORT, window=WINDOW, amp=amp,
                                   output_size=ORIGINAL_SIZE)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, prediction


def time_loader(source: JpegFrames) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for s in range(0, len(source), WINDOW):
            source.read(list(range(s, min(s + WINDOW, len(source)))))
        best = min(best, time.perf_counter() - start)
    return best


def time_masks(prediction) -> float:
    start = time.perf_counter()
    for _t, masks in prediction.frame_masks():
        assert masks[0].shape == ORIGINAL_SIZE
    return time.perf_counter() - start


def paper_model_fps(device: torch.device, size: tuple[int, int] = PAPER_SIZE, frames: int = FRAMES) -> dict:
    """losh-m (random init) at `size`, bf16 (on CUDA; float32 elsewhere, for a dry run at small sizes)."""
    from bench.train_step import NO_DOWNLOAD

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model(with_overrides(get_config("losh-m"), NO_DOWNLOAD)).to(device).eval()
    source = ArrayFrames(synthetic_video(frames, size))
    seconds, prediction = time_predict(model, source, device, "bf16")
    out = {"fps": round(frames / seconds, 1), "seconds": round(seconds, 3), "frames": frames,
           "size": f"{size[0]}x{size[1]}", "amp": "bf16" if device.type == "cuda" else "off",
           "mask_logits_mib": round(prediction._logits.nbytes / 2**20, 1)}
    if device.type == "cuda":
        out.update(device=torch.cuda.get_device_name(device),
                   peak_cuda_mib=round(torch.cuda.max_memory_allocated(device) / 2**20))
    return out


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_model(get_config("tiny")).eval()
    cpu = torch.device("cpu")
    frames = synthetic_video(FRAMES, TINY_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = JpegFrames(write_jpegs(frames, Path(tmp)), TINY_SIZE)
        loader_s = time_loader(jpegs)
        whole_s, prediction = time_predict(model, jpegs, cpu, "off")
    model_s, prediction = time_predict(model, ArrayFrames(frames), cpu, "off")
    masks_s = time_masks(prediction)
    if torch.cuda.is_available():
        losh_m = paper_model_fps(torch.device("cuda"))
    else:
        losh_m = {"absent": "no CUDA device on this machine: losh-m at 320x576 is timed only on CUDA "
                            "(bf16), a CPU run of the paper model would say nothing about its real speed"}
    model_fps, loader_fps = FRAMES / model_s, FRAMES / loader_s
    print(json.dumps({
        "bench": "video_inference_fps", "value": round(FRAMES / whole_s, 2), "unit": "frames/s", "target": None,
        "model": "tiny", "device": "cpu", "threads": THREADS, "frames": FRAMES, "window": WINDOW,
        "expressions": len(LONG), "input": f"{TINY_SIZE[0]}x{TINY_SIZE[1]}",
        "model_only_fps": round(model_fps, 2), "loader_fps": round(loader_fps, 1),
        "loader_keeps_up": loader_fps >= model_fps,
        "masks_fps": round(FRAMES / masks_s, 1), "masks_size": f"{ORIGINAL_SIZE[0]}x{ORIGINAL_SIZE[1]}",
        "mask_logits_mib": round(prediction._logits.nbytes / 2**20, 2),
        "chosen_query": prediction.chosen_query.tolist(), "losh_m": losh_m,
        "note": "random weights; tiny's 5 queries (losh-m keeps 50 per frame)",
    }), flush=True)


if __name__ == "__main__":
    main()
