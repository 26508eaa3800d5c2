"""OUT/predict.html of `losh predict`: the prediction of a user's video as one self-contained page beside its
overlay.mp4: each expression with its short text, chosen query and score, and a few frames spread over the video,
each expression's mask over each of them in its own colour."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from losh.inference.drawing import jpeg_bytes, render_overlay, resized_to_width
from losh.inference.html_page import Raw, page, paragraph, picture, section, table

PAGE_FRAMES = 8      # frames shown, spread evenly over the video
PAGE_WIDTH = 320     # pixels, each picture


def small(frame_rgb: np.ndarray, masks: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A frame and its masks at the page's width (masks by nearest neighbour)."""
    import cv2

    frame = resized_to_width(frame_rgb, min(PAGE_WIDTH, frame_rgb.shape[1]))
    size = (frame.shape[1], frame.shape[0])
    return frame, [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for m in masks]


def predict_page(report: dict, frames: Sequence[tuple[int, np.ndarray, list[np.ndarray]]],
                 colours: Sequence[tuple[int, int, int]]) -> str:
    """The page of `report` (what predictions.json holds) with `frames`: (frame id, RGB frame, one mask per
    expression), already small."""
    expressions = report["expressions"]
    swatches = [Raw('<span style="display:inline-block;width:14px;height:14px;background:#%02x%02x%02x"></span>'
                    % tuple(c)) for c in colours]
    summary = table(("", "expression", "short text", "query", "score", "masks"),
                    [(swatch, e["text"], e.get("short_text") or "", e["query"], f"{e['score']:.3f}", f"{e['masks']}/")
                     for swatch, e in zip(swatches, expressions)], numeric=(3, 4))
    rows = []
    for frame_id, frame, masks in frames:
        cells = [picture(jpeg_bytes(render_overlay(frame, [mask], [colour])), alt=f"frame {frame_id}: {e['text']}")
                 for mask, colour, e in zip(masks, colours, expressions)]
        rows.append((frame_id, *cells))
    grid = table(("frame", *(e["text"] for e in expressions)), rows, numeric=(0,))
    timings = report.get("timings", {})
    info = (f"{report.get('video', 'video')}: {report['frames']} frames of {report['size'][1]}x{report['size'][0]} "
            f"at {report['fps']} fps (model input {report['input_size'][1]}x{report['input_size'][0]}); model "
            f"{report['model']} on {report['device']}"
            + (f", {timings['total_s']:.1f} s" if "total_s" in timings else "")
            + "; the whole video with every mask: overlay.mp4")
    return page("Prediction: " + ", ".join(e["text"] for e in expressions), paragraph(info),
                section("Expressions", summary), section(f"{len(frames)} frames spread over the video", grid))
