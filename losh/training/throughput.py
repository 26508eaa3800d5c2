"""How fast training goes between two log steps: clips a second (all processes: this one's times their number, as
each trains an equal share), and the share of the wall time the loop spent waiting for the loader (near 0 when the
data keeps up; near 1 when the GPU starves)."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator


class Throughput:
    """The loop's batches pass through `batches` (which times the waits for the next one); `count` adds a step's
    clips; `read` at each log step."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._start, self._waited, self._clips = time.perf_counter(), 0.0, 0

    def batches(self, loader: Iterable) -> Iterator:
        """The loader's batches, the time spent waiting for each added up."""
        iterator = iter(loader)
        while True:
            asked = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._waited += time.perf_counter() - asked
            yield batch

    def count(self, clips: int) -> None:
        self._clips += clips

    def read(self) -> dict[str, float]:
        """{"train/clips_per_s", "train/data_wait_share"} since the last read (or the start), then start again."""
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        values = {"train/clips_per_s": self.processes * self._clips / elapsed,
                  "train/data_wait_share": min(1.0, self._waited / elapsed)}
        self._start, self._waited, self._clips = now, 0.0, 0
        return values
