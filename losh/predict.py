"""`losh predict`: masks of every frame of a user's video for each referring expression.

    from losh.predict import predict
    report = predict("run/checkpoints/last.pt", "clip.mp4", ["the man in red"], "out")

The whole-video inference is `losh.video_inference.predict_video`, the one implementation the Refer-YouTube-VOS
evaluation uses: sliding windows of the model's window over the whole video, the reference score of each query
averaged over the whole video, one query per expression (paper 3.8). Frames are resized as the checkpoint's
training data was prepared (short side, long-side cap: `ckpt["data_preparation"]["resolution"]`; A2D's
320 / 576 for older checkpoints) and the masks come back at the video's own size.

Streaming: a video file is read in three sequential passes, none of which holds the video:
1. `VideoFileFrames` counts the frames to keep (all, or with `fps` one per 1/fps seconds of timestamps);
2. the model's windows are decoded in order, a small ring of recent resized frames serving the reads (the
   last window re-reads up to `window` earlier frames);
3. the masks are streamed frame by frame (`VideoPrediction.frame_masks`) and written as PNGs while the
   original frames are decoded again for the overlay video.
The per-query mask logits `predict_video` keeps until the selection is known go to a memmap on disk beyond
`losh.video_inference.SPILL_BYTES`.

Output (all written into a temporary sibling folder, renamed to OUT at the end; nothing is left on error):
    OUT/<expression-slug>/<frame:05d>.png     bool masks at the video's size (0/255), `frame`: the 0-based index
                                              of the frame in the video (with fps sampling: of the kept frame
                                              in the decoded video; in a folder: its natural-sort position)
    OUT/predictions.json                      expressions, short texts, chosen query and score, frames, timings
    OUT/overlay.mp4, OUT/overlay.gif          each expression's mask in its own colour, with a legend
                                              (H.264 yuv420p, faststart; a downscaled GIF of <= 100 frames)
"""
from __future__ import annotations

import os
import re
import shutil
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pipeline.video import resize_frame, target_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEFAULT_RESOLUTION = {"short_side": 320, "max_long_side": 576}    # A2D's, for checkpoints that do not say
FOLDER_FPS = 24                                                    # the overlay's rate for a folder of frames
PREVIEW_FRAMES, PREVIEW_WIDTH = 100, 320
# one colour per expression (RGB), distinct and readable on video
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
           (245, 130, 48), (240, 50, 230), (210, 245, 60), (0, 128, 128)]
PREDICTIONS_SCHEMA = "losh.video-predictions"


class PredictError(ValueError):
    """A bad input (video, frames, checkpoint, output folder): the message says which and why."""


class PredictUsageError(PredictError):
    """The call itself is wrong (no expression, an option that does not apply)."""


# -------------------------------------------------------------------------------------------- frames

def natural_key(name: str) -> list:
    """Sort key putting 2.png before 10.png (digit runs compare as numbers, the rest case-insensitively)."""
    return [(0, int(part), part) if part.isdigit() else (1, part.lower(), part) for part in re.split(r"(\d+)", name)
            if part]


def _decoded(path: Path) -> Iterator[tuple[int, object]]:
    """(ordinal, av.VideoFrame) of the first video stream, frames with a negative pts dropped (as
    pipeline.video's decoding); a decoding error ends the video there."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise PredictError(f"cannot read video {path}: {_first_line(e)}") from e
    with container:
        if not container.streams.video:
            raise PredictError(f"cannot read video {path}: no video stream")
        container.streams.video[0].thread_type = "AUTO"
        n = 0
        try:
            for frame in container.decode(video=0):
                if frame.pts is not None and frame.pts < 0:
                    continue
                yield n, frame
                n += 1
        except av.FFmpegError:
            return


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class VideoFileFrames:
    """A video file (any PyAV/FFmpeg format: .mp4, .avi, ...) as a streaming `FrameSource`.

    The constructor decodes the video once without converting frames, to count the frames to keep (all of
    them, or with `fps` the first frame of each 1/fps-second slot of timestamps) and learn its size and rate.
    `read` then decodes sequentially, keeping at most `history` recent resized frames (reads must go
    forward, apart from re-reading up to `history` frames; anything earlier restarts decoding, counted in
    `passes`). `peak_held` is the most decoded frames held at once. `originals()` decodes again, a frame
    at a time, at the video's own size.
    """

    def __init__(self, path: Path, *, short_side: int, max_long_side: int, fps: float | None = None,
                 history: int = 16, progress: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise PredictError(f"video file not found: {self.path}")
        if fps is not None and not fps > 0:
            raise PredictUsageError(f"--fps must be positive, got {fps}")
        self.history = max(1, int(history))
        self.passes = 0
        self.peak_held = 0
        kept: list[int] = []
        times: list[float] = []
        size = None
        first_time, last_slot = None, -1
        rate = None
        import av

        try:
            with av.open(str(self.path), metadata_errors="ignore") as probe:
                stream = probe.streams.video[0] if probe.streams.video else None
                if stream is not None:
                    rate = stream.average_rate or stream.guessed_rate
        except (av.FFmpegError, OSError) as e:
            raise PredictError(f"cannot read video {self.path}: {_first_line(e)}") from e
        native = float(rate) if rate else None
        self.passes += 1
        for n, frame in tqdm(_decoded(self.path), desc="count frames", unit="frame", disable=not progress,
                             leave=False):
            if size is None:
                size = (frame.height, frame.width)
            t = frame.time if frame.time is not None else (n / native if native else float(n))
            if fps is not None:
                first_time = t if first_time is None else first_time
                slot = int(np.floor((t - first_time) * fps + 1e-6))
                if slot <= last_slot:
                    continue
                last_slot = slot
            kept.append(n)
            times.append(round(float(t), 6))
        if not kept:
            raise PredictError(f"no decodable frame in {self.path}")
        self.frame_ids = kept                        # decoded ordinal of each kept frame
        self.frame_times = times                     # its timestamp (s)
        self.original_size = size
        self._size = target_size(*size, short_side, max_long_side)
        self.native_fps = native
        if fps is not None:
            self.fps = min(float(fps), native) if native else float(fps)
        else:
            self.fps = native or float(FOLDER_FPS)
        self._ring: OrderedDict[int, np.ndarray] = OrderedDict()
        self._stream: Iterator[tuple[int, object]] | None = None
        self._next = 0                               # the next kept index the decoder yields

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _kept(self) -> Iterator[tuple[int, object]]:
        """(kept index, av frame) of the kept frames, in order."""
        self.passes += 1
        k = 0
        for n, frame in _decoded(self.path):
            if k == len(self.frame_ids):
                return
            if n == self.frame_ids[k]:
                yield k, frame
                k += 1
        if k < len(self.frame_ids):
            raise PredictError(f"{self.path}: decoding stopped at frame {k} of {len(self.frame_ids)} "
                               f"(the file changed or is damaged)")

    def read(self, indices: list[int]) -> np.ndarray:
        out = []
        for i in indices:
            if i not in self._ring:
                if self._stream is None or i < self._next:
                    self._ring.clear()
                    self._stream, self._next = self._kept(), 0
                while self._next <= i:
                    k, frame = next(self._stream)
                    self._ring[k] = resize_frame(frame.to_ndarray(format="rgb24"), self._size)
                    self._next = k + 1
                    while len(self._ring) > self.history:
                        self._ring.popitem(last=False)
                    self.peak_held = max(self.peak_held, len(self._ring))
            out.append(self._ring[i])
        return np.stack(out)

    def originals(self) -> Iterator[tuple[int, np.ndarray]]:
        """(kept index, RGB uint8 frame at the video's size), one at a time."""
        for k, frame in self._kept():
            yield k, frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        self._ring.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class FolderFrames:
    """A folder of frames (.jpg/.jpeg/.png, sorted naturally: 2.png before 10.png) as a `FrameSource`. The
    video's size is the first frame's; frames of another size are resized to it."""

    def __init__(self, folder: Path, *, short_side: int, max_long_side: int) -> None:
        self.path = Path(folder)
        if not self.path.is_dir():
            raise PredictError(f"frame folder not found: {self.path}")
        self.files = sorted((p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise PredictError(f"no frames in {self.path} (expected {'/'.join(IMAGE_SUFFIXES)} files)")
        self.original_size = self._image(0).shape[:2]
        self._size = target_size(*self.original_size, short_side, max_long_side)
        self.frame_ids = list(range(len(self.files)))
        self.fps = float(FOLDER_FPS)
        self.native_fps = None
        self.passes = 0
        self.peak_held = 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _image(self, i: int) -> np.ndarray:
        image = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if image is None:
            raise PredictError(f"cannot read frame {self.files[i]}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _original(self, i: int) -> np.ndarray:
        image = self._image(i)
        if image.shape[:2] != tuple(self.original_size):
            image = resize_frame(image, self.original_size)
        return image

    def read(self, indices: list[int]) -> np.ndarray:
        self.peak_held = max(self.peak_held, len(indices))
        return np.stack([resize_frame(self._original(i), self._size) for i in indices])

    def originals(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(len(self.files)):
            yield i, self._original(i)

    def close(self) -> None:
        pass


def open_frames(video: Path, *, short_side: int, max_long_side: int, fps: float | None = None,
                history: int = 16, progress: bool = False) -> VideoFileFrames | FolderFrames:
    """A folder of frames or a video file, as a streaming `FrameSource` at the model's input size."""
    video = Path(video)
    if video.is_dir():
        if fps is not None:
            raise PredictUsageError("--fps samples a video file by its timestamps; a folder of frames has none")
        return FolderFrames(video, short_side=short_side, max_long_side=max_long_side)
    if not video.exists():
        raise PredictError(f"no video or frame folder at {video}")
    return VideoFileFrames(video, short_side=short_side, max_long_side=max_long_side, fps=fps, history=history,
                           progress=progress)


# ------------------------------------------------------------------------------------------ overlay

def slugify(text: str, used: set[str]) -> str:
    """A folder name for an expression: lowercase ASCII words joined by '-', at most 60 characters, made
    unique among `used` (-2, -3, ...) and added to it."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:60].rstrip("-") or "expression"
    unique, k = slug, 1
    while unique in used:
        k += 1
        unique = f"{slug}-{k}"
    used.add(unique)
    return unique


def legend_patch(texts: Sequence[str], colours: Sequence[tuple[int, int, int]], width: int) -> np.ndarray:
    """An RGBA legend (a colour swatch and the expression per line) for frames `width` pixels wide."""
    scale = float(np.clip(width / 1100, 0.35, 1.0))
    thickness = 1 if scale < 0.7 else 2
    (_, text_h), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    line = text_h + base + max(2, int(6 * scale))
    pad, swatch = max(3, int(8 * scale)), text_h
    max_text = max(8, int(width * 0.7) - 3 * pad - swatch)
    shown = []
    for text in texts:
        label = text
        while len(label) > 3 and cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] > max_text:
            label = label[:-2].rstrip() + "\u2026"
        shown.append(label.replace("\u2026", "..."))
    text_w = max(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for s in shown)
    h, w = 2 * pad + line * len(shown), min(width, 3 * pad + swatch + text_w)
    patch = np.zeros((h, w, 4), dtype=np.uint8)
    patch[..., 3] = 170                                             # a dark, translucent box
    for k, (label, colour) in enumerate(zip(shown, colours)):
        y = pad + k * line
        patch[y + base // 2:y + base // 2 + swatch, pad:pad + swatch, :3] = colour
        patch[y + base // 2:y + base // 2 + swatch, pad:pad + swatch, 3] = 255
        canvas = np.ascontiguousarray(patch[..., :3])
        cv2.putText(canvas, label, (2 * pad + swatch, y + text_h + base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
        drawn = canvas.max(-1) > 0
        patch[..., :3] = canvas
        patch[drawn, 3] = 255
    return patch


def render_overlay(frame: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[tuple[int, int, int]],
                   legend: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """`frame` (RGB) with each mask tinted in its colour and outlined, and the legend at the top left, or
    below the frame (on a dark strip) where it would hide more than a quarter of a small frame's height."""
    out = frame.copy()
    for mask, colour in zip(masks, colours):
        if mask.any():
            tint = np.asarray(colour, dtype=np.float32)
            out[mask] = (out[mask] * (1 - alpha) + tint * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), max(1, frame.shape[1] // 400))
    if legend is not None and legend.shape[0] > out.shape[0] // 4:
        strip = np.full((legend.shape[0], out.shape[1], 3), 24, dtype=np.uint8)
        w = min(legend.shape[1], out.shape[1])
        shown = legend[:, :w, 3:4] > 0
        strip[:, :w] = np.where(shown, legend[:, :w, :3], strip[:, :w])
        return np.concatenate([out, strip])
    if legend is not None:
        h, w = min(legend.shape[0], out.shape[0]), min(legend.shape[1], out.shape[1])
        a = legend[:h, :w, 3:4].astype(np.float32) / 255
        out[:h, :w] = (out[:h, :w] * (1 - a) + legend[:h, :w, :3] * a).astype(np.uint8)
    return out


def _even(frame: np.ndarray) -> np.ndarray:
    """Padded by edge replication to even height and width (yuv420p needs them)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class Mp4Writer:
    """H.264 (yuv420p, faststart) MP4 written frame by frame with PyAV: what browsers and common players open.
    Falls back to MPEG-4 part 2 when FFmpeg has no H.264 encoder (`codec` says which)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        import av

        self.path = Path(path)
        self.container = av.open(str(self.path), "w", options={"movflags": "+faststart"})
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(FOLDER_FPS)
        self.stream = None
        for codec, options in (("libx264", {"crf": "20", "preset": "veryfast"}), ("h264", {}), ("mpeg4", {"qscale": "3"})):
            try:
                self.stream = self.container.add_stream(codec, rate=rate, options=options)
                self.codec = codec
                break
            except (av.FFmpegError, ValueError, KeyError):
                continue
        if self.stream is None:
            self.container.close()
            raise PredictError("this FFmpeg (PyAV) has no H.264 or MPEG-4 encoder: use --no-video")
        h, w = size
        self.stream.height, self.stream.width = h + h % 2, w + w % 2
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(rgb)), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None


def write_preview(path: Path, frames: Sequence[np.ndarray], seconds_per_frame: float) -> None:
    """An animated GIF (looping) of `frames` (RGB, already downscaled)."""
    from PIL import Image

    images = [Image.fromarray(f).quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
              for f in frames]
    duration = max(20, int(round(seconds_per_frame * 100)) * 10)     # GIF delays are in 1/100 s
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False,
                   disposal=1)


def preview_indices(frames: int, limit: int = PREVIEW_FRAMES) -> list[int]:
    """At most `limit` frame indices spread evenly over the video."""
    return sorted(set(np.linspace(0, frames - 1, min(frames, limit)).round().astype(int).tolist()))


# -------------------------------------------------------------------------------------------- predict

def _prepare_out(out: Path, overwrite: bool) -> Path:
    """The staging folder next to `out` (checked: `out` is absent, empty, or `overwrite`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        if not out.is_dir():
            raise PredictError(f"{out} exists and is not a folder (use --overwrite to replace it)")
        if any(out.iterdir()):
            raise PredictError(f"{out} exists and is not empty (use --overwrite to replace it)")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def _publish(stage: Path, out: Path) -> None:
    """Moves the finished staging folder to `out` (replacing what was there, checked before)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(stage, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(stage, out)


def _load(checkpoint: Path, device: torch.device, use_ema: bool, inference_short_pathway: str | None):
    from losh.checkpoint import load_checkpoint
    from losh.evaluate import model_from_checkpoint

    try:
        ckpt = load_checkpoint(Path(checkpoint))
    except FileNotFoundError as e:
        raise PredictError(str(e)) from e
    except ValueError as e:
        raise PredictError(str(e)) from e
    try:
        model = model_from_checkpoint(ckpt, device, use_ema=use_ema, inference_short_pathway=inference_short_pathway)
    except (KeyError, RuntimeError, TypeError) as e:
        raise PredictError(f"{checkpoint}: the checkpoint's model cannot be built ({_first_line(e)})") from e
    return model, ckpt


def short_texts_for(texts: Sequence[str], required: bool) -> list[str] | None:
    """The tagger's short text of each expression (spaCy, subject rule; the long text when it finds none), as
    inference gets it (paper 3.8: only the long expression is given). None when the tagger is not installed
    and the model does not need it."""
    from pipeline.shorten import Shortener, TaggerUnavailable

    try:
        shorts = Shortener(tagger="spacy", rule="subject").shorten_many(list(texts))
    except TaggerUnavailable as e:
        if required:
            raise PredictError(f"this model reads the short text at inference and the tagger is missing: {e}") from e
        return None
    return [s.strip() or t for s, t in zip(shorts, texts)]


def predict(checkpoint: Path, video: Path, texts: Sequence[str], out: Path, *, fps: float | None = None,
            device: str | None = None, overlay: bool = True, overwrite: bool = False,
            short_side: int | None = None, max_long_side: int | None = None, amp: str = "off",
            use_ema: bool = True, inference_short_pathway: str | None = None, progress: bool = False,
            spill_dir: Path | None = None) -> dict:
    """Masks of every frame of `video` (a video file or a folder of frames) for each of `texts`, written to
    `out` (see the module docstring); returns what `out/predictions.json` holds. Raises `PredictError` (a
    `ValueError`; `PredictUsageError` for a wrong call) with a one-line reason on bad inputs, leaving no
    `out` behind. `short_side` / `max_long_side` override the checkpoint's frame resolution."""
    from losh.device import AMP_CHOICES, Dist, select_device

    started = time.perf_counter()
    texts = [str(t).strip() for t in texts]
    if not texts:
        raise PredictUsageError("give at least one expression (--text \"the man in red\")")
    if any(not t for t in texts):
        raise PredictUsageError("an expression is empty")
    if amp not in AMP_CHOICES:
        raise PredictUsageError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    video, out = Path(video), Path(out)
    if not video.exists():
        raise PredictError(f"no video or frame folder at {video}")
    if fps is not None and video.is_dir():
        raise PredictUsageError("--fps samples a video file by its timestamps; a folder of frames has none")
    if fps is not None and not fps > 0:
        raise PredictUsageError(f"--fps must be positive, got {fps}")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise PredictError(f"{out} exists and is not empty (use --overwrite to replace it)")
    try:
        dev = select_device(Dist(), device)
    except RuntimeError as e:
        raise PredictUsageError(f"--device {device}: {_first_line(e)}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictUsageError(f"--device {device}: CUDA is not available on this machine")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, ckpt = _load(checkpoint, dev, use_ema, inference_short_pathway)
    timings["load_s"] = time.perf_counter() - t0
    preparation = ckpt.get("data_preparation") or {}
    resolution = {**DEFAULT_RESOLUTION, **(preparation.get("resolution") or {})}
    resolution_source = "checkpoint" if preparation.get("resolution") else "default (A2D: 320 / 576)"
    if short_side is not None or max_long_side is not None:
        resolution_source = "options"
    resolution = {"short_side": int(short_side or resolution["short_side"]),
                  "max_long_side": int(max_long_side or resolution["max_long_side"])}
    window = int(model.config.window)

    t0 = time.perf_counter()
    source = open_frames(video, **resolution, fps=fps, history=window, progress=progress)
    timings["count_s"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        shorts = short_texts_for(texts, required=bool(model.config.inference_uses_short_text))
        timings["short_text_s"] = time.perf_counter() - t0
        stage = _prepare_out(out, overwrite)
        try:
            report = _run(model, ckpt, source, texts, shorts, stage, dev=dev, amp=amp, window=window,
                          overlay=overlay, progress=progress, spill_dir=spill_dir, timings=timings)
            report.update(video=str(video), checkpoint=str(checkpoint), resolution={**resolution,
                          "source": resolution_source}, requested_fps=fps,
                          weights="ema" if use_ema and ckpt.get("model_ema") is not None else "trained")
            timings["total_s"] = time.perf_counter() - started
            report["timings"] = {k: round(v, 3) for k, v in timings.items()}
            report["timings"]["frames_per_s"] = round(report["frames"] / max(timings["total_s"], 1e-9), 2)
            from losh.evaluate import write_json
            write_json(stage / "predictions.json", report)
            _publish(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    finally:
        source.close()
    return report


@torch.no_grad()
def _run(model, ckpt: dict, source, texts: list[str], shorts: list[str] | None, stage: Path, *, dev: torch.device,
         amp: str, window: int, overlay: bool, progress: bool, spill_dir: Path | None,
         timings: dict[str, float]) -> dict:
    """Inference, then masks (and the overlay) streamed into `stage`."""
    from losh.video_inference import predict_video

    used: set[str] = set()
    slugs = [slugify(t, used) for t in texts]
    colours = [PALETTE[k % len(PALETTE)] for k in range(len(texts))]
    frames = len(source)
    t0 = time.perf_counter()
    prediction = predict_video(model, source, texts, shorts, window=window, output_size=source.original_size,
                               amp=amp, progress=progress, spill_dir=spill_dir)
    _sync(dev)
    timings["inference_s"] = time.perf_counter() - t0
    with prediction:
        for slug in slugs:
            (stage / slug).mkdir()
        writer = None
        keep_preview = set(preview_indices(frames)) if overlay else set()
        preview: list[np.ndarray] = []
        legend = None
        originals = source.originals() if overlay else None
        masks_s = overlay_s = 0.0
        stream = prediction.frame_masks()
        try:
            for _ in tqdm(range(frames), desc="write masks", unit="frame", disable=not progress):
                t0 = time.perf_counter()
                t, masks = next(stream)
                name = f"{source.frame_ids[t]:05d}.png"
                for slug, mask in zip(slugs, masks):
                    if not cv2.imwrite(str(stage / slug / name), mask.astype(np.uint8) * 255):
                        raise OSError(f"could not write {stage / slug / name}")
                t1 = time.perf_counter()
                masks_s += t1 - t0
                if overlay:
                    k, frame = next(originals)
                    if k != t:
                        raise RuntimeError(f"overlay frame {k} for masks of frame {t}")
                    if writer is None:
                        legend = legend_patch(texts, colours, frame.shape[1])
                        first = render_overlay(frame, masks, colours, legend)
                        writer = Mp4Writer(stage / "overlay.mp4", first.shape[:2], source.fps)
                    picture = render_overlay(frame, masks, colours, legend)
                    writer.write(picture)
                    if t in keep_preview:
                        scale = min(1.0, PREVIEW_WIDTH / picture.shape[1])
                        size = (max(1, round(picture.shape[0] * scale)), max(1, round(picture.shape[1] * scale)))
                        preview.append(resize_frame(picture, size))
                    overlay_s += time.perf_counter() - t1
        finally:
            if writer is not None:
                writer.close()
            if originals is not None:
                originals.close()
        timings["masks_s"] = masks_s
        report_overlay = None
        if overlay:
            t0 = time.perf_counter()
            step = frames / len(preview)
            write_preview(stage / "overlay.gif", preview, step / source.fps)
            overlay_s += time.perf_counter() - t0
            timings["overlay_s"] = overlay_s
            report_overlay = {"video": "overlay.mp4", "codec": writer.codec, "pixel_format": "yuv420p",
                              "fps": round(float(source.fps), 4), "frames": writer.frames,
                              "preview": "overlay.gif", "preview_frames": len(preview),
                              "colours": {slug: "#%02x%02x%02x" % c for slug, c in zip(slugs, colours)}}
        config = model.config
        return {
            "schema": PREDICTIONS_SCHEMA, "version": 1,
            "model": config.name, "window": window, "device": str(dev), "amp": amp,
            "inference_short_pathway": config.inference_short_pathway,
            "frames": frames, "size": list(source.original_size), "input_size": list(source.size),
            "fps": round(float(source.fps), 4), "native_fps": (round(source.native_fps, 4)
                                                                if source.native_fps else None),
            "frame_ids": list(source.frame_ids),
            "frame_files": [p.name for p in source.files] if isinstance(source, FolderFrames) else None,
            "expressions": [{"text": text, "short_text": None if shorts is None else shorts[k],
                             "short_text_used": bool(config.inference_uses_short_text),
                             "masks": slugs[k], "query": int(prediction.chosen_query[k]),
                             "score": round(float(prediction.scores[k].chosen), 6)}
                            for k, text in enumerate(texts)],
            "mask_format": "PNG, 0 (background) / 255 (referred), at the video's size; <frame:05d>.png with "
                           "frame = frame_ids[i], the frame's 0-based index in the video",
            "overlay": report_overlay,
            "data_preparation": ckpt.get("data_preparation"),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
