"""Reader of the precomputed flows for the training data loader.

Flow shards are opened on first use in each process (never before a DataLoader forks), at most
`max_open_shards` at a time (schemas/open_files.py), and checked against flows/index.json each
time they are opened; reading a sample's flows reads one HDF5 chunk. `check`, before a run starts, also checks that
they were computed from PREP as it is prepared now (the index's `prep_settings_hash` is the manifest's
`settings_hash`, each shard's `prep_shard_hash` its PREP shard's `settings_hash`): flows of a PREP prepared again
raise FlowsStale, naming `losh compute-flows`.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from losh.schemas.flows import INDEX_FILE, FlowParams, check_shard_attrs, flows_dir, index_splits, validate_index
from losh.schemas.open_files import OpenFiles
from losh.schemas.prepared import SchemaError, read_json
from losh.schemas.prepared_reader import load_manifest


class FlowsMissing(FileNotFoundError):
    """PREP has no (finished) flows, or none for the asked frame."""


class FlowsStale(SchemaError):
    """The flows were computed from PREP as it was prepared before (other settings or inputs): recompute them."""


def load_index(prep: Path) -> dict:
    path = flows_dir(prep) / INDEX_FILE
    if not path.exists():
        raise FlowsMissing(f"{path} does not exist: run `losh compute-flows --data {prep}` (or let it finish)")
    return validate_index(read_json(path), str(path))


class FlowReader:
    """flows(video_id, annotated frame) of PREP: float32 (O, 2, gh, gw) in grid pixels, valid (O,)."""

    def __init__(self, prep: Path, expect: FlowParams | None = None, *, max_open_shards: int | None = None) -> None:
        self.root = Path(prep)
        self.index = load_index(self.root)
        self.params = FlowParams.from_dict(self.index["params"], "flows/index.json")
        if expect is not None and expect.hash() != self.params.hash():
            raise SchemaError(f"the flows of {prep} were computed with {self.index['params']}, not with the "
                              f"requested {expect.to_dict()}; re-run `losh compute-flows` with those parameters")
        self._entries = {e["video_id"]: e for e in self.index["videos"]}
        self._rows = {e["video_id"]: {int(k): i for i, k in enumerate(e["frames"])} for e in self.index["videos"]}
        self.splits = index_splits(self.index)   # the splits whose annotated frames have flows
        self.files = OpenFiles(max_open_shards)

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
        entry = self._entries[video_id]
        path = self.root / entry["file"]
        try:
            return self.files.get(video_id, path, lambda _, f: self._check(f, entry, path))[0]
        except FileNotFoundError:
            raise FlowsMissing(f"{path} is listed in flows/index.json but missing: re-run `losh compute-flows`") from None
        except (OSError, KeyError) as error:
            raise SchemaError(f"{path}: damaged or truncated flow shard ({str(error).splitlines()[0][:100]}); re-run "
                              "`losh compute-flows`") from None

    def _check(self, f: h5py.File, entry: dict, path: Path) -> None:
        check_shard_attrs(dict(f.attrs), self.index, str(path))
        if f.attrs["inputs_hash"] != entry["inputs_hash"] or list(f["frames"][()]) != entry["frames"]:
            raise SchemaError(f"{path}: holds other frames than flows/index.json says; re-run `losh compute-flows`")

    def _missing(self, video_id: str, frame: int) -> FlowsMissing:
        """Why (video_id, frame) has no flows, and the command that adds them."""
        where = flows_dir(self.root) / INDEX_FILE
        from losh.schemas.prepared_reader import load_manifest, load_records  # only on this error path
        split = next((r.split for r in load_records(self.root, load_manifest(self.root))
                      if r.video_id == video_id and r.frame == frame), None)
        if split is not None and split not in self.splits:
            return FlowsMissing(f"no flows for video {video_id!r} frame {frame}: it is a {split} sample and {where} "
                                f"covers only the {'+'.join(self.splits)} split; run `losh compute-flows --data "
                                f"{self.root} --split {split}` (or --split all)")
        return FlowsMissing(f"no flows for video {video_id!r} frame {frame} in {where} (not an annotated frame of "
                            "this PREP, or flows computed before it changed): re-run `losh compute-flows`")

    def check(self, samples: list[tuple[str, int]]) -> None:
        """The flows were computed from PREP as it is prepared now, every (video, annotated frame) listed has flows,
        and every shard holding them opens and matches the index: found before a run starts. FlowsStale /
        FlowsMissing / SchemaError name the first problems and the repair."""
        manifest = load_manifest(self.root)
        self._check_prepared_settings(manifest)
        missing = [(v, f) for v, f in samples if not self.has(v, f)]
        if missing:
            raise self._missing(*missing[0])
        bad, stale = self._shard_problems(sorted({v for v, _ in samples}), manifest)
        if stale:
            more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
            raise FlowsStale(f"the flows of {len(stale)} videos ({', '.join(stale[:3])}{more}) were computed from "
                             f"other shards than {self.root} holds now (it was prepared again): recompute them with "
                             f"`losh compute-flows --data {self.root}`")
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise SchemaError(f"{len(bad)} flow shards cannot be used: {'; '.join(bad[:5])}{more}; re-run "
                              f"`losh compute-flows --data {self.root}`: it keeps the whole shards and computes the others")

    def _shard_problems(self, video_ids: list[str], manifest: dict) -> tuple[list[str], list[str]]:
        """(the flow shards of `video_ids` that cannot be used, why; the videos whose flows were computed from
        another PREP shard than the one there now)."""
        prep_hashes = self._prep_shard_hashes(manifest, set(video_ids))
        bad, stale = [], []
        for video_id in video_ids:
            entry = self._entries[video_id]
            path = self.root / entry["file"]
            try:
                with h5py.File(path, "r") as f:
                    self._check(f, entry, path)
                    if video_id in prep_hashes and f.attrs["prep_shard_hash"] != prep_hashes[video_id]:
                        stale.append(video_id)
            except (OSError, KeyError) as error:
                bad.append(f"{path} ({'missing' if not path.exists() else 'damaged or truncated'}: "
                           f"{(str(error) or type(error).__name__).splitlines()[0][:100]})")
            except SchemaError as error:
                bad.append(str(error))
        return bad, stale

    def _check_prepared_settings(self, manifest: dict) -> None:
        """FlowsStale when the index was written for PREP prepared with other settings (stored frames of another
        size, window or codec)."""
        computed_for, now = self.index["prep_settings_hash"], manifest["settings_hash"]
        if computed_for != now:
            raise FlowsStale(f"the flows in {flows_dir(self.root)} were computed from {self.root} as it was prepared "
                             f"with other settings (settings_hash {computed_for}, now {now}): recompute them with "
                             f"`losh compute-flows --data {self.root}`")

    def _prep_shard_hashes(self, manifest: dict, video_ids: set[str]) -> dict[str, str]:
        """The `settings_hash` of the PREP shards of `video_ids` (what each flow shard records it was computed
        from); a shard that cannot be read is left out (the prepared data's own check names it)."""
        hashes = {}
        for shard in manifest["shards"]:
            if shard.get("video_id") not in video_ids:
                continue
            try:
                with h5py.File(self.root / shard["file"], "r") as f:
                    hashes[shard["video_id"]] = str(f.attrs["settings_hash"])
            except (OSError, KeyError, TypeError):
                continue
        return hashes

    def read(self, video_id: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(flows float32 (O, 2, gh, gw), valid bool (O,)) of 1-based annotated `frame`."""
        rows = self._rows.get(video_id)
        if rows is None or frame not in rows:
            raise self._missing(video_id, frame)
        f = self._shard(video_id)
        row = rows[frame]
        return f["flows"][row].astype(np.float32), f["valid"][row].astype(bool)

    def close(self) -> None:
        self.files.close()
