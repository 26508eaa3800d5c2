"""The synthetic scenes' pictures and files: textured shapes on a textured background, each frame's label map,
and the writers of the A2D-Sentences files (mp4 clips, h5 masks, text)."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import h5py
import numpy as np

from losh.pipeline.synth_scenes import COLOURS, SHADE_BASE, SHADE_NOISE, SHADE_STRIPE, Video
from losh.schemas.atomic import atomic_path, atomic_write_text

FPS = 24


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey, slightly tinted low-frequency noise plus fine static texture (for the optical flow)."""
    coarse = rng.random((4, 5, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grey = smooth.mean(axis=2, keepdims=True)
    tint = smooth - grey
    fine = rng.normal(0.0, 9.0, (height, width, 1)).astype(np.float32)
    fine = cv2.GaussianBlur(fine, (3, 3), 0.7)[..., None]
    return np.clip(75.0 + 90.0 * grey + 15.0 * tint + fine, 0, 255).astype(np.float32)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Inside test in the object's own coordinates (u right, v down), bounded by `radius`."""
    if shape == "circle":
        return u * u + v * v <= radius * radius
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= radius
    if shape == "triangle":  # equilateral, vertices on the bounding circle, pointing up
        half = radius / 2
        s3 = math.sqrt(3) / 2
        return (v <= half) & (s3 * u - v / 2 <= half) & (-s3 * u - v / 2 <= half)
    raise ValueError(f"unknown shape {shape!r}")


def render(video: Video, t: int, height: int, width: int,
            with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray, dict[int, int]]:
    """Frame t (0-based): RGB image, label map of the visible instance ids (-1 background) and the
    unoccluded area of each instance."""
    image = video.background.copy() if with_image else None
    labels = np.full((height, width), -1, dtype=np.int16)
    full_area = {}
    for index in video.z_order:
        obj = video.instances[index]
        cx, cy, angle, r = obj.xs[t], obj.ys[t], obj.angles[t], obj.radius
        x0, x1 = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
        y0, y1 = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = xx - cx, yy - cy
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        inside = shape_mask(obj.shape, u, v, r)
        full_area[obj.instance_id] = int(inside.sum())
        labels[y0:y1, x0:x1][inside] = obj.instance_id
        if image is not None:
            # the texture moves (and turns) with the object, so that the optical flow follows it
            phase = (u * math.cos(obj.stripe_angle) + v * math.sin(obj.stripe_angle)) / obj.stripe_period
            stripe = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
            p = obj.noise.shape[0]
            noise = obj.noise[np.clip(np.rint(v).astype(int) + p // 2, 0, p - 1),
                              np.clip(np.rint(u).astype(int) + p // 2, 0, p - 1)]
            shade = SHADE_BASE + SHADE_STRIPE * stripe + SHADE_NOISE * noise
            colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
            patch = image[y0:y1, x0:x1]
            patch[inside] = (shade[inside, None] * colour).astype(np.float32)
    if image is not None:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, labels, full_area


def write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def write_mp4(path: Path, images: list[np.ndarray]) -> None:
    height, width = images[0].shape[:2]
    with atomic_path(path) as tmp:   # keeps the suffix: cv2.VideoWriter picks the container from it
        _write_checked_mp4(tmp, images, height, width)


def _write_checked_mp4(tmp: Path, images: list[np.ndarray], height: int, width: int) -> None:
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write mp4v to {tmp}")
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    decoded = count_frames(tmp, height, width)
    if decoded != len(images):
        raise RuntimeError(f"{tmp.name}: wrote {len(images)} frames, read back {decoded}")


def count_frames(path: Path, height: int, width: int) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return count
            if frame.shape[:2] != (height, width):
                raise RuntimeError(f"{path.name}: decoded frame of size {frame.shape[:2]}, wrote {(height, width)}")
            count += 1
    finally:
        capture.release()


def write_h5(path: Path, labels: np.ndarray, instance_ids: list[int]) -> tuple[int, list[int]]:
    """One annotated frame as A2D stores it: masks transposed, (W, H) for a single instance.
    Returns (instances listed, their ids)."""
    listed = [i for i in instance_ids if np.any(labels == i)]
    masks = np.stack([(labels == i).astype(np.uint8) for i in listed])  # (N, H, W)
    boxes = np.zeros((4, len(listed)), dtype=np.float64)
    for n, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        boxes[:, n] = (cols.min(), rows.min(), cols.max(), rows.max())  # x1, y1, x2, y2 (inclusive)
    stored = masks.transpose(0, 2, 1)
    if len(listed) == 1:
        stored = stored[0]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("instance", data=np.asarray(listed, dtype=np.int64))
        f.create_dataset("reMask", data=np.ascontiguousarray(stored))
        f.create_dataset("reBBox", data=boxes)
    return len(listed), listed
