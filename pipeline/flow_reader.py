"""Reader of the precomputed flows for the training data loader.

Flow shards are opened on first use in each process (never before a DataLoader forks) and checked
against flows/index.json once when opened; reading a sample's flows reads one HDF5 chunk.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from pipeline.flows import INDEX_FILE, flows_dir
from schemas.flows import FlowParams, check_shard_attrs, validate_index
from schemas.prepared import SchemaError, read_json


class FlowsMissing(FileNotFoundError):
    """PREP has no (finished) flows, or none for the asked frame."""


def load_index(prep: Path) -> dict:
    path = flows_dir(prep) / INDEX_FILE
    if not path.exists():
        raise FlowsMissing(f"{path} does not exist: run `losh compute-flows {prep}` (or let it finish)")
    return validate_index(read_json(path), str(path))


class FlowReader:
    """flows(video_id, annotated frame) of PREP: float32 (O, 2, gh, gw) in grid pixels, valid (O,)."""

    def __init__(self, prep: Path, expect: FlowParams | None = None) -> None:
        self.root = Path(prep)
        self.index = load_index(self.root)
        self.params = FlowParams.from_dict(self.index["params"], "flows/index.json")
        if expect is not None and expect.hash() != self.params.hash():
            raise SchemaError(f"the flows of {prep} were computed with {self.index['params']}, not with the "
                              f"requested {expect.to_dict()}; re-run `losh compute-flows` with those parameters")
        self._entries = {e["video_id"]: e for e in self.index["videos"]}
        self._rows = {e["video_id"]: {int(k): i for i, k in enumerate(e["frames"])} for e in self.index["videos"]}
        self._files: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    @property
    def offsets(self) -> tuple[int, ...]:
        return self.params.offsets

    @property
    def stride(self) -> int:
        return self.params.stride

    def grid(self, video_id: str) -> tuple[int, int]:
        return tuple(self._entries[video_id]["grid"])

    def has(self, video_id: str, frame: int) -> bool:
        return frame in self._rows.get(video_id, {})

    def _shard(self, video_id: str) -> h5py.File:
        if os.getpid() != self._pid:   # forked worker: handles of the parent must not be shared
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(video_id)
        if f is None:
            entry = self._entries[video_id]
            path = self.root / entry["file"]
            if not path.exists():
                raise FlowsMissing(f"{path} is listed in flows/index.json but missing: re-run `losh compute-flows`")
            f = h5py.File(path, "r")
            try:
                check_shard_attrs(dict(f.attrs), self.index, str(path))
                if f.attrs["inputs_hash"] != entry["inputs_hash"] or list(f["frames"][()]) != entry["frames"]:
                    raise SchemaError(f"{path}: holds other frames than flows/index.json says; "
                                      "re-run `losh compute-flows`")
            except Exception:
                f.close()
                raise
            self._files[video_id] = f
        return f

    def read(self, video_id: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(flows float32 (O, 2, gh, gw), valid bool (O,)) of 1-based annotated `frame`."""
        rows = self._rows.get(video_id)
        if rows is None or frame not in rows:
            raise FlowsMissing(f"no flows for video {video_id!r} frame {frame} in {flows_dir(self.root) / INDEX_FILE}"
                               " (not an annotated frame of this PREP, or flows computed before it changed): "
                               "re-run `losh compute-flows`")
        f = self._shard(video_id)
        row = rows[frame]
        return f["flows"][row].astype(np.float32), f["valid"][row].astype(bool)

    def __getstate__(self) -> dict:   # DataLoader workers started by spawn: open their own handles
        return {**self.__dict__, "_files": {}}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}
