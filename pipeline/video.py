"""Video decoding, resizing and frame windows: the only place that touches mp4 files."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class VideoUnreadable(RuntimeError):
    """The mp4 is missing, cannot be opened, or yields fewer frames than needed."""


def window_indices(frame: int, num_frames: int, window: int) -> list[int]:
    """0-based indices of the `window` frames around 1-based annotated `frame`.

    MTTR's convention: from f-1-w//2 to f-1+(w+1)//2 (exclusive), clamped to the video, so the
    annotated frame sits at position w//2 and the ends repeat the first/last frame.
    """
    center = frame - 1
    return [min(max(i, 0), num_frames - 1) for i in range(center - window // 2, center + (window + 1) // 2)]


def target_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(h, w) after MTTR's resize: short side to `short_side`, long side capped at `max_long_side`."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_long_side:
        scale = max_long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    shrinking = h < frame.shape[0]
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (N, H, W) binary masks, so labels stay binary."""
    h, w = size
    if masks.shape[1:] == (h, w):
        return masks.astype(bool)
    out = np.zeros((masks.shape[0], h, w), dtype=bool)
    for i, m in enumerate(masks):
        out[i] = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return out


def count_frames(path: Path) -> int:
    """Number of decodable frames (container metadata can lie, so we count by decoding)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoUnreadable(f"cannot open video {path}")
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def decode_frames(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int, bool]:
    """Decode the frames at the wanted 0-based indices (BGR uint8) in one sequential pass.

    Returns (frames, number of frames decoded, whether the video ended before the last wanted
    index). When it ended early, its real last frame is kept too, so that windows can be clamped
    to the true length (container metadata can be wrong).
    """
    if not Path(path).is_file():
        raise VideoUnreadable(f"video file not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoUnreadable(f"cannot open video {path}")
    frames: dict[int, np.ndarray] = {}
    last_wanted = max(wanted) if wanted else -1
    n, ended, previous = 0, False, None
    try:
        while n <= last_wanted:
            ok, frame = cap.read()
            if not ok:
                ended = True
                break
            if n in wanted:
                frames[n] = frame
            previous = frame
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise VideoUnreadable(f"no decodable frame in {path}")
    if ended:
        frames[n - 1] = previous
    return frames, n, ended
