"""Short-expression ground truth: instances of a video that share a short expression share a mask."""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def short_key(text: str) -> str:
    """Normalised form used to decide that two short expressions are the same."""
    text = re.sub(r"\s+", " ", text.lower()).strip(" .,;:!?")
    return re.sub(r"^(the|a|an) ", "", text)


def group_by_short(referred: Sequence[tuple[int, str]]) -> list[tuple[int, ...]]:
    """For each (instance_id, short text) of a video's expressions, the sorted ids of every instance referred
    by an expression with the same short text (its short mask merges them); () for an expression whose
    instance is unknown (-1: masks private). An instance may have several expressions (Refer-YouTube-VOS)."""
    by_key: dict[str, set[int]] = {}
    for instance_id, text in referred:
        if instance_id >= 0:
            by_key.setdefault(short_key(text), set()).add(instance_id)
    return [tuple(sorted(by_key[short_key(text)])) if instance_id >= 0 else () for instance_id, text in referred]


def merge_masks(instance_ids: np.ndarray, masks: np.ndarray, members: list[int]) -> np.ndarray:
    """Union of the masks (N, H, W) of the frame's instances listed in `members`."""
    selected = np.isin(instance_ids, members)
    if not selected.any():
        return np.zeros(masks.shape[1:], dtype=bool)
    return masks[selected].any(axis=0)
