"""Reader of a prepared data set: validated manifest and records, lazily opened HDF5 shards.

Shard files are opened on first use in each process (never before a DataLoader forks), at most
`max_open_shards` at a time (schemas/open_files.py), and reading a sample decodes only its
window's frames: no video decoding at training time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from losh.schemas.frame_codec import decode_frame
from losh.schemas.open_files import OpenFiles
from losh.schemas.prepared import PREPARED_SCHEMA, SampleRecord, SchemaError, read_json, validate_manifest


class PreparedDataMissing(FileNotFoundError):
    """PREP is not a finished prepared data set."""


@dataclass
class PreparedSample:
    record: SampleRecord
    frames: np.ndarray          # (T, h, w, 3) uint8 RGB, the window
    long_masks: np.ndarray      # (A, h, w) bool, the referred instance at each target of the record
    short_masks: np.ndarray     # (A, h, w) bool, all instances sharing the short expression
    instance_masks: np.ndarray  # (A, N, h, w) bool, every annotated instance of each target frame
    instance_ids: np.ndarray    # (N,)

    @property
    def annotated_index(self) -> int:
        # MTTR's window puts the annotated frame at w//2, also when clamping repeats it at a video end
        return len(self.record.window) // 2

    @property
    def long_mask(self) -> np.ndarray:
        """(h, w): the first target's (A2D: the annotated frame's) referred mask."""
        return self.long_masks[0]

    @property
    def short_mask(self) -> np.ndarray:
        return self.short_masks[0]


def load_manifest(prep: Path) -> dict:
    path = Path(prep) / "manifest.json"
    if not path.exists():
        raise PreparedDataMissing(f"{prep} has no manifest.json: run `losh prepare-data` first (or let it finish)")
    return validate_manifest(read_json(path), str(path))


def load_records(prep: Path, manifest: dict) -> list[SampleRecord]:
    path = Path(prep) / manifest["records_file"]
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}:{line_no}: not valid JSON ({e})") from e
            records.append(SampleRecord.from_dict(d, f"{path}:{line_no}"))
    if len(records) != manifest["counts"]["samples"]:
        raise SchemaError(f"{path}: {len(records)} records but the manifest counts {manifest['counts']['samples']}")
    return records


REPAIR_PREPARED = ("re-run the same `losh prepare-data` command: it keeps the shards that are whole and writes the "
                   "missing or damaged ones again")


def _shard_fault(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError) or "No such file" in str(error):
        return "missing"
    return f"damaged or truncated ({(str(error).strip() or type(error).__name__).splitlines()[0][:120]})"


class PreparedDataset:
    """Random access to the samples of PREP (optionally one split).

    max_open_shards: shard files kept open in each process (default: $LOSH_MAX_OPEN_SHARDS or 64;
    0: no bound); each open shard keeps its frame index, dropped when the shard is closed.
    """

    def __init__(self, prep: Path, split: str | None = None, *, max_open_shards: int | None = None) -> None:
        self.root = Path(prep)
        self.manifest = load_manifest(self.root)
        records = load_records(self.root, self.manifest)
        self.records = [r for r in records if split is None or r.split == split]
        self.files = OpenFiles(max_open_shards)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PreparedSample:
        return self.read(self.records[index])

    def _shard(self, rel: str) -> tuple[h5py.File, dict[int, int]]:
        """The open shard and its frame index (frame number -> position in `frames`)."""
        # the frame index is read once per opening, not once per sample
        try:
            return self.files.get(rel, self.root / rel,
                                  lambda _, f: {int(n): i for i, n in enumerate(f["frame_numbers"][()])})
        except (OSError, KeyError) as error:
            raise SchemaError(f"{self.root / rel}: {_shard_fault(error)}; {REPAIR_PREPARED}") from None

    def check_shards(self) -> None:
        """Opens every shard this split reads and checks its header: a missing or damaged shard is found before a
        run starts (not in a loader worker hours later). SchemaError names up to five of them and the repair."""
        bad = []
        for rel in sorted({r.shard for r in self.records}):
            path = self.root / rel
            try:
                with h5py.File(path, "r") as f:
                    if f.attrs.get("schema") != PREPARED_SCHEMA or "frame_numbers" not in f:
                        bad.append(f"{path} (not a {PREPARED_SCHEMA} shard)")
            except (OSError, KeyError) as error:
                bad.append(f"{path} ({_shard_fault(error)})")
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise SchemaError(f"{len(bad)} prepared shards cannot be read: {'; '.join(bad[:5])}{more}; "
                              f"{REPAIR_PREPARED}")

    def read_frames(self, record: SampleRecord, frame_numbers: list[int] | None = None) -> np.ndarray:
        """(T, h, w, 3) uint8 RGB frames for the given 1-based frame numbers (default: the window)."""
        f, position = self._shard(record.shard)
        numbers = frame_numbers if frame_numbers is not None else record.window
        cache: dict[int, np.ndarray] = {}
        out = []
        for n in numbers:
            if n not in cache:
                if n not in position:
                    raise SchemaError(f"{record.shard}: frame {n} of sample {record.sample_id} is not stored")
                cache[n] = decode_frame(f["frames"][position[n]])[:, :, ::-1]
            out.append(cache[n])
        return np.ascontiguousarray(np.stack(out))

    def read(self, record: SampleRecord) -> PreparedSample:
        return self.read_clip([record])[0]

    def read_clip(self, records: list[SampleRecord], with_frames: bool = True) -> list[PreparedSample]:
        """Samples of one clip (the same video, window and targets: several expressions of it), with the
        frames and the target frames' masks read once and shared."""
        first = records[0]
        for r in records[1:]:
            if (r.shard, r.window, r.target_frames) != (first.shard, first.window, first.target_frames):
                raise ValueError(f"read_clip: {r.sample_id} and {first.sample_id} are not of the same clip")
        f, _ = self._shard(first.shard)
        h, w = first.size
        groups = [f[f"annotated/{frame:05d}"] for frame in first.target_frames]
        masks = (np.stack([g["masks"][()] for g in groups]).astype(bool) if groups
                 else np.zeros((0, 0, h, w), dtype=bool))                      # (A, N, h, w)
        instance_ids = groups[0]["instance_ids"][()] if groups else np.zeros(0, dtype=np.int64)
        for frame, g in zip(first.target_frames[1:], groups[1:]):
            if not np.array_equal(g["instance_ids"][()], instance_ids):
                raise SchemaError(f"{first.shard}: the target frames of {first.sample_id} list other instances "
                                  f"(frame {frame}); a sample's targets must share their instance list")
        frames = self.read_frames(first) if with_frames else np.zeros((0, h, w, 3), dtype=np.uint8)
        # every short mask of the target frames read once (S, small), then each record's picked
        shorts = (np.stack([g["short_masks"][()] for g in groups]).astype(bool) if groups
                  else np.zeros((0, 0, h, w), dtype=bool))                      # (A, S, h, w)
        samples = []
        for r in records:
            short = shorts[:, r.short_index] if groups else np.zeros((0, h, w), dtype=bool)
            samples.append(PreparedSample(record=r, frames=frames, long_masks=masks[:, r.referred_index] if groups
                                          else np.zeros((0, h, w), dtype=bool), short_masks=short,
                                          instance_masks=masks, instance_ids=instance_ids))
        return samples

    def original_mask(self, record: SampleRecord) -> np.ndarray | None:
        """The referred (H, W) mask at the original size of a window sample's first target, where the shard
        keeps one (samples stored at another size)."""
        f, _ = self._shard(record.shard)
        dataset = f.get(f"annotated/{record.target_frames[0]:05d}/original_masks")
        return None if dataset is None else dataset[record.referred_index].astype(bool)

    def original_labels(self, record: SampleRecord, frame: int) -> np.ndarray | None:
        """The raw (H, W) label map of an annotated frame of a whole-video sample, where the shard keeps it."""
        f, _ = self._shard(record.shard)
        dataset = f.get(f"annotated/{frame:05d}/labels")
        return None if dataset is None else dataset[()]

    def frame_names(self, record: SampleRecord) -> list[str]:
        """The data set's names of the video's frames (index n-1: frame n), e.g. "00005" (for submissions)."""
        f, _ = self._shard(record.shard)
        names = f.attrs.get("frame_names")
        return json.loads(names) if names is not None else [f"{n:05d}" for n in range(1, record.video_frames + 1)]

    def close(self) -> None:
        self.files.close()
