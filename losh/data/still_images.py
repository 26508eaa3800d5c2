"""A clip from a still image, as SgMg trains on RefCOCO/+/g (its datasets/refexp2seq.py and image_to_seq_augmenter.py,
after SeqFormer and STEm-Seg): the image itself and `length - 1` copies, each transformed on its own (colour jitter,
perspective, rotation and translation, sometimes motion blur), in a random order. The masks move with their frame
(the same geometric transform, nearest neighbour); colour and blur touch the image only.

SgMg draws with imgaug seeded from the clock; here every draw comes from the generator the caller passes (the
data set seeds it from its seed, the epoch and the item), so that a resumed run sees the same clips. The transforms
follow imgaug's definitions with SgMg's ranges (`SGMG_CLIP`):
  colour        one or both, in this order, of: the same integer in +-brightness added to every channel; an integer
                in +-hue_saturation added to the saturation and to the hue (the hue on imgaug's 0-255 circle)
  perspective   each corner moved inwards by |N(0, perspective)| of the width and height, the quadrilateral
                stretched back over the whole frame (imgaug's PerspectiveTransform, keep_size)
  affine        rotation about the centre uniform in +-rotation degrees, translation uniform in +-translate of the
                width and of the height; linear interpolation, black outside
  motion blur   with probability motion_blur_p, a line kernel of one of `motion_blur_kernels` sizes at a uniform angle
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class StillClipAugment:
    rotation: float = 20.0                      # degrees
    translate: float = 0.1                      # fraction of the width / height
    perspective: float = 0.08                   # corner jitter, fraction of the width / height
    hue_saturation: int = 5
    brightness: int = 40
    motion_blur_p: float = 0.25
    motion_blur_kernels: tuple[int, ...] = (9, 11)


# SgMg's ImageToSeqAugmenter for RefCOCO (datasets/refexp2seq.py)
SGMG_CLIP = StillClipAugment()


def still_image_clip(image: np.ndarray, masks: np.ndarray, length: int, rng: np.random.Generator,
                     augment: StillClipAugment = SGMG_CLIP) -> tuple[np.ndarray, np.ndarray]:
    """(frames (length, h, w, 3) uint8, masks (length, M, h, w) bool) of a clip made from `image` (h, w, 3) uint8
    and its `masks` (M, h, w): the image once as it is and `length - 1` transformed copies, shuffled."""
    if length < 1:
        raise ValueError(f"a clip holds at least one frame, got {length}")
    frames, clip_masks = [image], [masks.astype(bool)]
    for _ in range(length - 1):
        frame, moved = transformed_copy(image, masks, rng, augment)
        frames.append(frame)
        clip_masks.append(moved)
    order = rng.permutation(length)
    return np.stack([frames[i] for i in order]), np.stack([clip_masks[i] for i in order])


def transformed_copy(image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                     augment: StillClipAugment = SGMG_CLIP) -> tuple[np.ndarray, np.ndarray]:
    """One frame of the clip: colour, then the geometric transform (image and masks), then maybe motion blur."""
    h, w = image.shape[:2]
    image = colour_jitter(image, rng, augment)
    matrix = affine_matrix(rng, h, w, augment) @ perspective_matrix(rng, h, w, augment)
    frame = cv2.warpPerspective(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(0, 0, 0))
    moved = np.stack([cv2.warpPerspective(m.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0 for m in masks]) \
        if len(masks) else np.zeros((0, h, w), dtype=bool)
    if rng.random() < augment.motion_blur_p:
        frame = motion_blur(frame, int(rng.choice(augment.motion_blur_kernels)), float(rng.uniform(0, 360)))
    return frame, moved


def colour_jitter(image: np.ndarray, rng: np.random.Generator, augment: StillClipAugment) -> np.ndarray:
    """imgaug's SomeOf((1, None), [Add(brightness), AddToHueAndSaturation(hue_saturation)]) on an RGB image."""
    count = int(rng.integers(1, 3))
    chosen = sorted(rng.choice(2, size=count, replace=False).tolist())
    out = image
    for which in chosen:
        if which == 0:
            value = int(rng.integers(-augment.brightness, augment.brightness + 1))
            out = np.clip(out.astype(np.int16) + value, 0, 255).astype(np.uint8)
        else:
            value = int(rng.integers(-augment.hue_saturation, augment.hue_saturation + 1))
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.int16)
            hsv[..., 0] = (hsv[..., 0] + round(value * 180 / 255)) % 180     # OpenCV's hue runs 0..179
            hsv[..., 1] = np.clip(hsv[..., 1] + value, 0, 255)
            out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return out


def perspective_matrix(rng: np.random.Generator, h: int, w: int, augment: StillClipAugment) -> np.ndarray:
    """3 x 3: the quadrilateral of corners moved inwards by |N(0, scale)| stretched over the whole frame."""
    jitter = np.abs(rng.normal(0.0, augment.perspective, size=(4, 2))) * (w, h)
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    inwards = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    source = corners + inwards * jitter.astype(np.float32)
    return cv2.getPerspectiveTransform(source.astype(np.float32), corners)


def affine_matrix(rng: np.random.Generator, h: int, w: int, augment: StillClipAugment) -> np.ndarray:
    """3 x 3: rotation about the centre and translation, drawn in SgMg's ranges."""
    angle = float(rng.uniform(-augment.rotation, augment.rotation))
    tx, ty = rng.uniform(-augment.translate, augment.translate, size=2) * (w, h)
    matrix = np.eye(3)
    matrix[:2] = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    matrix[:2, 2] += (tx, ty)
    return matrix


def motion_blur(image: np.ndarray, size: int, angle: float) -> np.ndarray:
    """`image` convolved with a normalised line of `size` pixels through the centre at `angle` degrees."""
    kernel = np.zeros((size, size), dtype=np.float32)
    kernel[size // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR)
    kernel /= max(float(kernel.sum()), 1e-6)
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)
