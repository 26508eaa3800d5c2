"""Pictures to look at: the annotated frame with ground truth and predicted masks, long and short."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import cv2
import numpy as np

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


def _caption(panel: np.ndarray, text: str, lines: int = 2) -> np.ndarray:
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
    panels = [_caption(overlay(frame_rgb, gt_long, GT_COLOUR), f"GT long: {long_text}"),
              _caption(overlay(frame_rgb, pred_long, PRED_COLOUR),
                       "prediction (long)" + (f", IoU {iou:.2f}" if iou is not None else ""))]
    if gt_short is not None and pred_short is not None:
        panels += [_caption(overlay(frame_rgb, gt_short, GT_COLOUR), f"GT short: {short_text}"),
                   _caption(overlay(frame_rgb, pred_short, PRED_COLOUR), "prediction (short)")]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1)


def save_picture(path: Path, picture_rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    cv2.imwrite(str(tmp), picture_rgb[:, :, ::-1])
    os.replace(tmp, path)
