"""Short-expression ground truth: instances of a video that share a short expression share a mask."""
from __future__ import annotations

import re

import numpy as np


def short_key(text: str) -> str:
    """Normalised form used to decide that two short expressions are the same."""
    text = re.sub(r"\s+", " ", text.lower()).strip(" .,;:!?")
    return re.sub(r"^(the|a|an) ", "", text)


def group_by_short(shorts: dict[int, str]) -> dict[int, list[int]]:
    """instance_id -> sorted ids of all instances of the video with the same short expression."""
    by_key: dict[str, list[int]] = {}
    for instance_id, text in shorts.items():
        by_key.setdefault(short_key(text), []).append(instance_id)
    return {i: sorted(by_key[short_key(t)]) for i, t in shorts.items()}


def merge_masks(instance_ids: np.ndarray, masks: np.ndarray, members: list[int]) -> np.ndarray:
    """Union of the masks (N, H, W) of the frame's instances listed in `members`."""
    selected = np.isin(instance_ids, members)
    if not selected.any():
        return np.zeros(masks.shape[1:], dtype=bool)
    return masks[selected].any(axis=0)
