"""Contract of a prepared data set (PREP): manifest.json, samples.jsonl and per-video HDF5 shards.

PREP/manifest.json   written last: schema name + version, source, short-text settings, counts
PREP/samples.jsonl   one SampleRecord per line, sorted by sample_id
PREP/report.json     broken input, by id and reason
PREP/shards/<video_id>.h5
    attrs: schema, version, video_id, settings_hash, decoder, records (JSON), problems (JSON), counts (JSON)
    frames          vlen uint8: encoded frames (BGR, `codec`), one per stored video frame
    frame_numbers   int32: 1-based video frame number of each entry of `frames`
    annotated/<frame:05d>/instance_ids  int64 (N,)  annotated instances of the frame
    annotated/<frame:05d>/masks         uint8 (N, h, w)  their masks at the stored resolution
    annotated/<frame:05d>/short_masks   uint8 (S, h, w)  merged masks of the short-expression groups
A shard exists only once complete (written under a temporary name, then renamed).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PREPARED_SCHEMA = "losh.prepared"
PREPARED_VERSION = 2   # 2: video_frames, MTTR's sample list (empty masks, windows past the end kept)
SPLITS = ("train", "test")


class SchemaError(ValueError):
    """A manifest, record or shard does not follow this contract (or another version of it)."""


def read_json(path: Path) -> Any:
    """A stage's JSON file; invalid JSON is a SchemaError naming the file (callers check presence)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON ({e})") from e


def check_version(obj: dict, what: str, schema: str = PREPARED_SCHEMA, version: int = PREPARED_VERSION) -> None:
    if obj.get("schema") != schema:
        raise SchemaError(f"{what}: not a {schema} file (schema={obj.get('schema')!r})")
    if obj.get("version") != version:
        raise SchemaError(f"{what}: {schema} version {obj.get('version')!r}, this toolkit reads version {version};"
                          " re-run the stage that wrote it")


@dataclass(frozen=True)
class SampleRecord:
    """One training/evaluation sample: an expression at one annotated frame of its video."""

    sample_id: str
    video_id: str
    instance_id: int
    frame: int                  # 1-based annotated frame number
    split: str
    long: str
    short: str
    shard: str                  # path relative to PREP
    window: list[int]           # 1-based frame numbers of the w frames around `frame`, clamped to the
                                # decoded video; position w//2 is the annotated frame's (its last frame
                                # when `frame` lies past the decoded end, as MTTR does)
    referred_index: int         # index of the instance in annotated/<frame>/instance_ids
    short_index: int            # index in annotated/<frame>/short_masks
    short_instance_ids: list[int]  # instances merged into the short mask (>1: merged)
    size: list[int]             # stored [h, w]
    orig_size: list[int]        # raw video [H, W]
    video_frames: int           # frames decoded from the video (what `window` is clamped to)

    @property
    def annotated_position(self) -> int:
        """Index in `window` that stands for the annotated frame (MTTR's w//2)."""
        return len(self.window) // 2

    @property
    def past_end(self) -> bool:
        """The annotated frame lies past the decoded end: the window shows the video's last frames."""
        return self.frame > self.video_frames

    @property
    def short_merged(self) -> bool:
        return len(self.short_instance_ids) > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "record") -> "SampleRecord":
        expected = {f.name: f.type for f in fields(cls)}
        missing = set(expected) - set(d)
        if missing:
            raise SchemaError(f"{where}: missing fields {sorted(missing)}")
        extra = set(d) - set(expected)
        if extra:
            raise SchemaError(f"{where}: unknown fields {sorted(extra)}")
        record = cls(**d)
        record.validate(where)
        return record

    def validate(self, where: str = "record") -> None:
        def bad(msg: str) -> SchemaError:
            return SchemaError(f"{where} ({self.sample_id!r}): {msg}")

        for name in ("sample_id", "video_id", "long", "short", "shard"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(f"{name} must be a non-empty string")
        for name in ("instance_id", "frame", "referred_index", "short_index", "video_frames"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(f"{name} must be a non-negative integer")
        if self.frame < 1:
            raise bad("frame numbers are 1-based")
        if self.split not in SPLITS:
            raise bad(f"split must be one of {SPLITS}, got {self.split!r}")
        if not self.window or not all(isinstance(f, int) and f >= 1 for f in self.window):
            raise bad("window must be a non-empty list of 1-based frame numbers")
        if self.video_frames < 1:
            raise bad("video_frames must be >= 1")
        w, centre = len(self.window), self.frame - 1
        expected = [min(max(i, 0), self.video_frames - 1) + 1 for i in range(centre - w // 2, centre + (w + 1) // 2)]
        if self.window != expected:
            raise bad(f"window {self.window} is not MTTR's window of {w} around frame {self.frame} clamped to "
                      f"{self.video_frames} frames ({expected})")
        if self.instance_id not in self.short_instance_ids:
            raise bad("short_instance_ids must contain the referred instance")
        for name in ("size", "orig_size"):
            v = getattr(self, name)
            if len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v):
                raise bad(f"{name} must be [h, w] positive integers")


MANIFEST_FIELDS = {
    "schema": str, "version": int, "dataset": str, "source": str, "created": str,
    "short_text": dict, "window": int, "resolution": dict, "codec": dict, "decoder": str, "settings_hash": str,
    "counts": dict, "shards": list, "records_file": str, "report_file": str,
}


def validate_manifest(manifest: dict, where: str = "manifest.json") -> dict:
    check_version(manifest, where)
    for name, typ in MANIFEST_FIELDS.items():
        if name not in manifest:
            raise SchemaError(f"{where}: missing field {name!r}")
        if not isinstance(manifest[name], typ):
            raise SchemaError(f"{where}: field {name!r} must be {typ.__name__}")
    for key in ("source", "tagger", "rule"):
        if key not in manifest["short_text"]:
            raise SchemaError(f"{where}: short_text lacks {key!r}")
    for key in ("samples", "merged_short_masks", "broken", "samples_empty_mask", "samples_window_past_end",
                "videos_frame_count_mismatch"):
        if key not in manifest["counts"]:
            raise SchemaError(f"{where}: counts lacks {key!r}")
    return manifest
