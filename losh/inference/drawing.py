"""Everything drawn on frames: masks tinted and outlined on video frames with a legend (`losh predict`'s overlay and
its GIF preview), evaluation's side-by-side pictures of ground truth and prediction, long and short, the rows of
frame, ground truth and long- and short-text masks that training shows at each validation, and the small overlays
of the HTML reports."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from losh.schemas.atomic import atomic_path

GT_COLOUR = (0, 200, 0)      # RGB
PRED_COLOUR = (230, 40, 40)


def overlay(frame_rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.45) -> np.ndarray:
    """Mask blended over the frame, with its outline drawn solid."""
    out = frame_rgb.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, 1)
    return out


def caption(panel: np.ndarray, text: str, lines: int = 2) -> np.ndarray:
    """The panel under a white bar holding `text`, wrapped on `lines` lines (long expressions fit)."""
    width = max(8, int(panel.shape[1] / 6.5))
    rows = textwrap.wrap(text, width)[:lines] or [""]
    bar = np.full((4 + 14 * lines, panel.shape[1], 3), 255, np.uint8)
    for i, row in enumerate(rows):
        cv2.putText(bar, row, (3, 13 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel])


def comparison_picture(frame_rgb: np.ndarray, long_text: str, short_text: str, gt_long: np.ndarray,
                       pred_long: np.ndarray, gt_short: np.ndarray | None = None,
                       pred_short: np.ndarray | None = None, iou: float | None = None) -> np.ndarray:
    """Panels side by side: GT long | predicted long [| GT short | predicted short], captioned.
    Small frames are enlarged (nearest neighbour) so that the pictures and captions stay readable."""
    zoom = max(1, round(320 / frame_rgb.shape[1]))
    if zoom > 1:
        frame_rgb = np.repeat(np.repeat(frame_rgb, zoom, 0), zoom, 1)
        gt_long, pred_long = (np.repeat(np.repeat(m, zoom, 0), zoom, 1) for m in (gt_long, pred_long))
        if gt_short is not None and pred_short is not None:
            gt_short, pred_short = (np.repeat(np.repeat(m, zoom, 0), zoom, 1) for m in (gt_short, pred_short))
    panels = [caption(overlay(frame_rgb, gt_long, GT_COLOUR), f"GT long: {long_text}"),
              caption(overlay(frame_rgb, pred_long, PRED_COLOUR),
                      "prediction (long)" + (f", IoU {iou:.2f}" if iou is not None else ""))]
    if gt_short is not None and pred_short is not None:
        panels += [caption(overlay(frame_rgb, gt_short, GT_COLOUR), f"GT short: {short_text}"),
                   caption(overlay(frame_rgb, pred_short, PRED_COLOUR), "prediction (short)")]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1)


SHORT_COLOUR = (40, 90, 230)


def _zoomed(width: int, target: int) -> int:
    """The whole factor that brings a small frame near `target` pixels wide (1 for frames already that wide)."""
    return max(1, round(target / width))


def _repeat(array: np.ndarray, zoom: int) -> np.ndarray:
    return np.repeat(np.repeat(array, zoom, 0), zoom, 1) if zoom > 1 else array


def validation_row(frame_rgb: np.ndarray, long_text: str, short_text: str, gt_long: np.ndarray,
                   pred_long: np.ndarray, pred_short: np.ndarray | None, iou: float | None = None,
                   target_width: int = 240) -> np.ndarray:
    """Four captioned panels: the frame | the ground truth | the long-text mask | the short-text mask (blank where
    the model has no short pathway)."""
    zoom = _zoomed(frame_rgb.shape[1], target_width)
    frame = _repeat(frame_rgb, zoom)
    gt_long, pred_long = _repeat(gt_long, zoom), _repeat(pred_long, zoom)
    short = (caption(overlay(frame, _repeat(pred_short, zoom), SHORT_COLOUR), f"short: {short_text}")
             if pred_short is not None else caption(np.full_like(frame, 255), "no short pathway"))
    long_caption = "long text" + (f", IoU {iou:.2f}" if iou is not None else "")
    panels = [caption(frame, long_text), caption(overlay(frame, gt_long, GT_COLOUR), "ground truth"),
              caption(overlay(frame, pred_long, PRED_COLOUR), long_caption), short]
    return side_by_side(panels)


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels of one height in a row, white gaps between."""
    spacer = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [spacer, p]
    return np.concatenate(row, axis=1)


def stack_rows(rows: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Rows one under another (narrower ones padded white on the right)."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded)[:-gap] if gap else np.concatenate(padded)


def thumbnail(frame_rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, width: int = 160) -> np.ndarray:
    """One small picture of a prediction: the predicted mask tinted, the ground truth outlined in green."""
    picture = overlay(frame_rgb, pred, PRED_COLOUR)
    contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, GT_COLOUR, 1)
    return resized_to_width(picture, width)


def resized_to_width(picture_rgb: np.ndarray, width: int) -> np.ndarray:
    """`picture_rgb` scaled to `width` pixels wide (area resampling down, nearest up: masks stay crisp)."""
    h, w = picture_rgb.shape[:2]
    if w == width:
        return picture_rgb
    size = (width, max(1, round(h * width / w)))
    return cv2.resize(picture_rgb, size, interpolation=cv2.INTER_AREA if width < w else cv2.INTER_NEAREST)


def jpeg_bytes(picture_rgb: np.ndarray, quality: int = 85) -> bytes:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(picture_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("could not encode a JPEG picture")
    return data.tobytes()


def save_picture(path: Path, picture_rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), picture_rgb[:, :, ::-1]):
            raise OSError(f"could not write {path}")


# one colour per expression (RGB), distinct and readable on video
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
           (245, 130, 48), (240, 50, 230), (210, 245, 60), (0, 128, 128)]


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


def write_preview(path: Path, frames: Sequence[np.ndarray], seconds_per_frame: float) -> None:
    """An animated GIF (looping) of `frames` (RGB, already downscaled)."""
    from PIL import Image

    images = [Image.fromarray(f).quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
              for f in frames]
    duration = max(20, int(round(seconds_per_frame * 100)) * 10)     # GIF delays are in 1/100 s
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False,
                   disposal=1)
