"""A bounded set of open HDF5 files for the readers of a DataLoader worker (LRU, per process).

A real A2D run has ~3,000 prepared shards and ~3,000 flow shards: keeping every file a worker ever
opened passes the usual 1,024 open-file limit and costs HDF5's metadata and chunk caches per file.
The readers keep at most `max_open` files each; the least recently used one is closed when another
is needed, and re-opened (and its small per-file index rebuilt) when it is needed again.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

MAX_OPEN_ENV = "LOSH_MAX_OPEN_SHARDS"
DEFAULT_MAX_OPEN = 64


def max_open_from_env(default: int = DEFAULT_MAX_OPEN) -> int:
    """LOSH_MAX_OPEN_SHARDS (>= 1; 0 means unbounded), else `default`."""
    raw = os.environ.get(MAX_OPEN_ENV)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_OPEN_ENV}={raw!r}: expected an integer >= 0 (0: no bound)") from None
    if value < 0:
        raise ValueError(f"{MAX_OPEN_ENV}={raw!r}: expected an integer >= 0 (0: no bound)")
    return value


class OpenFiles:
    """At most `max_open` HDF5 files open in this process (0: no bound), each with an index value that
    `on_open(key, file)` builds once per opening and that is dropped with the file.

    Handles are never shared across processes: a forked child (a DataLoader worker) starts with
    none, and a pickled copy (spawn) carries none.
    """

    def __init__(self, max_open: int | None = None) -> None:
        self.max_open = max_open_from_env() if max_open is None else int(max_open)
        if self.max_open < 0:
            raise ValueError(f"max_open must be >= 0 (0: no bound), got {max_open}")
        self._open: OrderedDict[str, tuple[h5py.File, Any]] = OrderedDict()
        self._pid = os.getpid()
        self.opened = 0   # files opened by this process (re-openings after an eviction included)

    def get(self, key: str, path: Path, on_open: Callable[[str, h5py.File], Any] | None = None) -> tuple[h5py.File, Any]:
        """(file, its index value), opening `path` if `key` is not open; the least recently used
        file is closed first when the bound is reached. If `on_open` raises, the file is closed."""
        if os.getpid() != self._pid:   # forked worker: the parent's handles must not be used here
            self._open, self._pid, self.opened = OrderedDict(), os.getpid(), 0
        entry = self._open.get(key)
        if entry is not None:
            self._open.move_to_end(key)
            return entry
        if self.max_open:
            while len(self._open) >= self.max_open:
                _, (evicted, _) = self._open.popitem(last=False)
                evicted.close()
        f = h5py.File(path, "r")
        try:
            value = on_open(key, f) if on_open is not None else None
        except BaseException:
            f.close()
            raise
        self._open[key] = (f, value)
        self.opened += 1
        return f, value

    def __len__(self) -> int:
        return len(self._open) if os.getpid() == self._pid else 0

    def keys(self) -> list[str]:
        """Open keys, least recently used first (empty in a process that has opened none)."""
        return list(self._open) if os.getpid() == self._pid else []

    def close(self) -> None:
        if os.getpid() == self._pid:
            for f, _ in self._open.values():
                f.close()
        self._open = OrderedDict()

    def __getstate__(self) -> dict:   # spawned workers open their own handles
        return {**self.__dict__, "_open": OrderedDict(), "opened": 0}
