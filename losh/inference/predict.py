"""`losh predict`: masks of every frame of a user's video for each referring expression.

    from losh.inference.predict import predict
    report = predict("run/checkpoints/last.pt", "clip.mp4", ["the man in red"], "out")

The whole-video inference is `losh.inference.video_inference.predict_video`, the one implementation the
Refer-YouTube-VOS evaluation uses: sliding windows of the model's window over the whole video, the reference score
of each query averaged over the whole video, one query per expression (paper 3.8). Frames are resized as the checkpoint's
training data was prepared (short side, long-side cap: `ckpt["data_preparation"]["resolution"]`; A2D's
320 / 576 for older checkpoints) and the masks come back at the video's own size.

Its parts: the video's frames (`losh.inference.frames`), the overlay's drawing (`losh.inference.drawing`), the
H.264 writer (`losh.pipeline.video.H264Writer`) and the checkpoint's model (`losh.training.checkpoint`).

Streaming: a video file is read in three sequential passes, none of which holds the video:
1. `VideoFileFrames` counts the frames to keep (all, or with `fps` one per 1/fps seconds of timestamps);
2. the model's windows are decoded in order, a small ring of recent resized frames serving the reads (the
   last window re-reads up to `window` earlier frames);
3. the masks are streamed frame by frame (`VideoPrediction.frame_masks`) and written as PNGs while the
   original frames are decoded again for the overlay video.
The per-query mask logits `predict_video` keeps until the selection is known go to a memmap on disk beyond
`losh.inference.video_inference.SPILL_BYTES`.

Output (all written into a temporary sibling folder, renamed to OUT at the end; nothing is left on error, and
what a killed run left, `.OUT.partial-<pid>`, is removed by the next run):
    OUT/<expression-slug>/<frame:05d>.png     bool masks at the video's size (0/255), `frame`: the 0-based index
                                              of the frame in the video (with fps sampling: of the kept frame
                                              in the decoded video; in a folder: its natural-sort position)
    OUT/predictions.json                      expressions, short texts, chosen query and score, frames, timings
    OUT/overlay.mp4, OUT/overlay.gif          each expression's mask in its own colour, with a legend
                                              (H.264 yuv420p, faststart; a downscaled GIF of <= 100 frames)
    OUT/predict.html                          one self-contained page: the expressions, scores, and 8 frames spread
                                              over the video with each expression's mask (with the overlay only)
"""
from __future__ import annotations

import re
import shutil
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from losh.errors import PredictError, PredictUsageError, first_line
from losh.inference.drawing import PALETTE, legend_patch, render_overlay, write_preview
from losh.inference.frames import FolderFrames, open_frames
from losh.inference.predict_page import PAGE_FRAMES, predict_page, small
from losh.pipeline.video import H264Writer, NoVideoEncoder, resize_frame
from losh.schemas.atomic import atomic_write_json, remove_stale_staging, staging_path
from losh.schemas.config import ModelConfig
from losh.schemas.folders import publish_folder
from losh.schemas.progress import progress_bar

__all__ = ["PredictError", "PredictUsageError", "predict"]

DEFAULT_RESOLUTION = {"short_side": 320, "max_long_side": 576}    # A2D's, for checkpoints that do not say
PREVIEW_FRAMES, PREVIEW_WIDTH = 100, 320
PREDICTIONS_SCHEMA = "losh.video-predictions"


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


def preview_indices(frames: int, limit: int = PREVIEW_FRAMES) -> list[int]:
    """At most `limit` frame indices spread evenly over the video."""
    return sorted(set(np.linspace(0, frames - 1, min(frames, limit)).round().astype(int).tolist()))


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
    stage = staging_path(out)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def remove_stale_outputs(out: Path) -> list[Path]:
    """What killed predicts of `out` left beside it: their staging folders, and the earlier `out` that a publish
    moved aside when the new one is in place. A live process's are kept."""
    removed = remove_stale_staging(out)
    if out.is_dir():   # else the aside folder may be the only copy of the earlier output
        removed += remove_stale_staging(out, ".old-")
    return removed


def _load(checkpoint: Path, device: torch.device, use_ema: bool, inference_short_pathway: str | None,
          text_encoder: str | None = None):
    from losh.training.checkpoint import load_checkpoint, model_from_checkpoint

    try:
        ckpt = load_checkpoint(Path(checkpoint))
    except FileNotFoundError as e:
        raise PredictError(str(e)) from e
    except ValueError as e:
        raise PredictError(str(e)) from e
    try:
        model = model_from_checkpoint(ckpt, device, use_ema=use_ema, inference_short_pathway=inference_short_pathway,
                                      text_encoder=text_encoder)
    except (KeyError, RuntimeError, TypeError) as e:
        raise PredictError(f"{checkpoint}: the checkpoint's model cannot be built ({first_line(e)})") from e
    return model, ckpt


def short_texts_for(texts: Sequence[str], config: ModelConfig, required: bool) -> list[str] | None:
    """The machine short text of each expression the model was trained with (its config's rule and tagger; the
    long text when it finds none), as inference gets it (paper 3.8: only the long expression is given). None when
    the tagger is not installed and the model does not need it."""
    from losh.inference.short_text import tagger_short_texts
    from losh.pipeline.shorten import TaggerUnavailable

    try:
        return tagger_short_texts(texts, config)[0]
    except TaggerUnavailable as e:
        if required:
            raise PredictError(f"this model reads the short text at inference and the tagger is missing: {e}") from e
        return None


def predict(checkpoint: Path, video: Path, texts: Sequence[str], out: Path, *, fps: float | None = None,
            device: str | None = None, overlay: bool = True, overwrite: bool = False,
            short_side: int | None = None, max_long_side: int | None = None, amp: str = "off",
            use_ema: bool = True, inference_short_pathway: str | None = None, progress: bool = False,
            spill_dir: Path | None = None, text_encoder: str | None = None) -> dict:
    """Masks of every frame of `video` (a video file or a folder of frames) for each of `texts`, written to
    `out` (see the module docstring); returns what `out/predictions.json` holds. Raises `PredictError` (a
    `ValueError`; `PredictUsageError` for a wrong call) with a one-line reason on bad inputs, leaving no
    `out` behind. `short_side` / `max_long_side` override the checkpoint's frame resolution."""
    from losh.training.device import AMP_CHOICES, Dist, select_device

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
    remove_stale_outputs(out)
    try:
        dev = select_device(Dist(), device)
    except RuntimeError as e:
        raise PredictUsageError(f"--device {device}: {first_line(e)}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictUsageError(f"--device {device}: CUDA is not available on this machine")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, ckpt = _load(checkpoint, dev, use_ema, inference_short_pathway, text_encoder)
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
        shorts = short_texts_for(texts, model.config, required=bool(model.config.inference_uses_short_text))
        timings["short_text_s"] = time.perf_counter() - t0
        stage = _prepare_out(out, overwrite)
        try:
            page_frames: list = []
            report = _run(model, ckpt, source, texts, shorts, stage, dev=dev, amp=amp, window=window,
                          overlay=overlay, progress=progress, spill_dir=spill_dir, timings=timings,
                          page_frames=page_frames)
            report.update(video=str(video), checkpoint=str(checkpoint), resolution={**resolution,
                          "source": resolution_source}, requested_fps=fps,
                          weights="ema" if use_ema and ckpt.get("model_ema") is not None else "trained")
            timings["total_s"] = time.perf_counter() - started
            report["timings"] = {k: round(v, 3) for k, v in timings.items()}
            report["timings"]["frames_per_s"] = round(report["frames"] / max(timings["total_s"], 1e-9), 2)
            if overlay:
                report["page"] = "predict.html"
                (stage / "predict.html").write_text(predict_page(report, page_frames, _colours(len(texts))),
                                                    encoding="utf-8")
            atomic_write_json(stage / "predictions.json", report)
            publish_folder(stage, out)   # replaces what was there (checked before)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    finally:
        source.close()
    return report


@torch.no_grad()
def _run(model, ckpt: dict, source, texts: list[str], shorts: list[str] | None, stage: Path, *, dev: torch.device,
         amp: str, window: int, overlay: bool, progress: bool, spill_dir: Path | None,
         timings: dict[str, float], page_frames: list) -> dict:
    """Inference, then masks (and the overlay) streamed into `stage`; with the overlay, `page_frames` receives the
    frames predict.html shows (frame id, small frame, small masks)."""
    from losh.inference.video_inference import predict_video

    used: set[str] = set()
    slugs = [slugify(t, used) for t in texts]
    colours = _colours(len(texts))
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
        keep_page = set(preview_indices(frames, PAGE_FRAMES)) if overlay else set()
        preview: list[np.ndarray] = []
        legend = None
        originals = source.originals() if overlay else None
        masks_s = overlay_s = 0.0
        stream = prediction.frame_masks()
        try:
            for _ in progress_bar(range(frames), desc="write masks", unit="frame", disable=not progress):
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
                        try:
                            writer = H264Writer(stage / "overlay.mp4", first.shape[:2], source.fps)
                        except NoVideoEncoder as e:
                            raise PredictError(f"{e}: use --no-video") from e
                    picture = render_overlay(frame, masks, colours, legend)
                    writer.write(picture)
                    if t in keep_page:
                        page_frames.append((source.frame_ids[t], *small(frame, masks)))
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


def _colours(count: int) -> list[tuple[int, int, int]]:
    """One colour per expression, the overlay's and the page's."""
    return [PALETTE[k % len(PALETTE)] for k in range(count)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
