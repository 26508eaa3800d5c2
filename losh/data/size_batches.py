"""Evaluation batches of clips of one frame size, so that no clip is padded and a clip's outputs do not
depend on which other clips share its batch (or on the batch size)."""
from __future__ import annotations

from typing import Sequence


def size_grouped_batches(sizes: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of `sizes` in batches of at most `batch_size`, each of one (h, w); sizes in order of first
    appearance and indices in dataset order within a size (deterministic, every index once)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, size in enumerate(sizes):
        by_size.setdefault(tuple(int(v) for v in size), []).append(index)
    return [indices[start:start + batch_size] for indices in by_size.values()
            for start in range(0, len(indices), batch_size)]
