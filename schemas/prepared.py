"""Contract of a prepared data set (PREP): manifest.json, samples.jsonl and per-video HDF5 shards.

Every data set (A2D-Sentences, Refer-YouTube-VOS, Refer-DAVIS17, RefCOCO/+/g, ...) is prepared into this one
layout; the trainer and the evaluator never know which data set they read.

PREP/manifest.json   written last: schema name + version, data set, source, short-text settings, counts,
                     the splits (their kind, whether they hold masks) and the split evaluated by default; the
                     settings (window, resolution, codec, decoder, `settings_hash` of them, reader_options) that
                     prepare-data compares before it resumes into PREP (other settings: refused unless --overwrite)
PREP/samples.jsonl   one SampleRecord per line, sorted by sample_id
PREP/report.json     broken input, by id and reason
PREP/shards/<video_id>.h5
    attrs: schema, version, video_id, settings_hash, decoder, records (JSON), problems (JSON), counts (JSON),
           frame_names (JSON: the data set's name of frame number n at index n-1, e.g. "00005")
    frames          vlen uint8: encoded frames (BGR, `codec`), one per stored video frame
    frame_numbers   int32: 1-based video frame number of each entry of `frames`
    annotated/<frame:05d>/instance_ids  int64 (N,)  annotated instances of the frame
    annotated/<frame:05d>/masks         uint8 (N, h, w)  their masks at the stored resolution
    annotated/<frame:05d>/short_masks   uint8 (S, h, w)  merged masks of the short-expression groups
    annotated/<frame:05d>/original_masks uint8 (N, H, W)  window samples stored at another size: the masks at
                                        the original size (MTTR scores there)
    annotated/<frame:05d>/labels        uint8 (H, W)  whole-video splits of palette data sets: the raw label
                                        map at the original size (object id, 0 background, 255 void),
                                        what J&F is scored on
A shard exists only once complete (written under a temporary name, then renamed).

Two kinds of sample:
  "window"  a window of frames the model sees at once (training; A2D's evaluation): `targets` are the
            window positions with masks (A2D: the annotated frame at w//2; Refer-YouTube-VOS: every frame)
  "video"   an expression over its whole video (window = every frame), predicted by sliding windows and
            scored per expression (J&F) on its annotated frames (`targets`; none where masks are private)

A split's kind (manifest "splits"): "window" and "video" as their samples', or "image": still images (RefCOCO,
RefCOCO+, RefCOCOg), one-frame "window" samples (window [1], targets [0]) whose shard holds the image once and the
referred object as instance 1. Training makes a clip of the model's window from each (losh/data/still_images.py);
such a split has no optical flow (no L_fbc), and is scored image by image.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from losh.schemas.safe_paths import unsafe_reason

PREPARED_SCHEMA = "losh.prepared"
PREPARED_VERSION = 3   # 2: video_frames, MTTR's sample list; 3: any data set (kinds, targets, expression ids)
# train/test: A2D-Sentences, JHMDB; holdout: train videos held out with masks, valid: the Refer-YouTube-VOS
# server's split (no masks); val: Refer-DAVIS17's; val/testA/testB (RefCOCO, RefCOCO+) and val/test (RefCOCOg)
SPLITS = ("train", "test", "holdout", "valid", "val", "testA", "testB")
KINDS = ("window", "video")             # of a sample
SPLIT_KINDS = (*KINDS, "image")         # of a split: "image" holds still images' one-frame window samples


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
    """One sample: an expression with the frames the model sees and the masks of its annotated frames."""

    sample_id: str
    video_id: str
    expression_id: str          # the data set's id of the expression (the submission's folder name)
    subset: str                 # "" or the expression set it belongs to (Refer-DAVIS17: annot1, ...)
    instance_id: int            # the referred object's id in the annotations; -1 where masks are private
    frame: int                  # 1-based anchor frame: L_fbc's annotated frame k (A2D: the annotated frame)
    split: str
    kind: str                   # "window" or "video" (module docstring)
    long: str
    short: str
    shard: str                  # path relative to PREP
    window: list[int]           # 1-based frame numbers the model sees, clamped to the decoded video;
                                # kind "window": position w//2 shows `frame` (its last frame when `frame`
                                # lies past the decoded end, as MTTR does)
    targets: list[int]          # window positions with masks (loss / metrics)
    target_frames: list[int]    # their annotated/<frame> groups (A2D past the end: the annotated frame)
    referred_index: int         # index of the instance in the instance_ids of each target frame
    short_index: int            # index in the short_masks of each target frame
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

        for name in ("sample_id", "video_id", "expression_id", "long", "short", "shard"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(f"{name} must be a non-empty string")
        for name in ("video_id", "expression_id"):    # they name files: one plain path component each
            reason = unsafe_reason(getattr(self, name))
            if reason is not None:
                raise bad(f"{name} {getattr(self, name)!r} is not a plain file name ({reason})")
        if self.shard != f"shards/{self.video_id}.h5":
            raise bad(f"shard {self.shard!r} is not shards/<video_id>.h5")
        for name in ("frame", "referred_index", "short_index", "video_frames"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(f"{name} must be a non-negative integer")
        if not isinstance(self.instance_id, int) or self.instance_id < -1:
            raise bad("instance_id must be an object id, or -1 where the masks are private")
        if self.frame < 1:
            raise bad("frame numbers are 1-based")
        if self.split not in SPLITS:
            raise bad(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.kind not in KINDS:
            raise bad(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.video_frames < 1:
            raise bad("video_frames must be >= 1")
        if not self.window or not all(isinstance(f, int) and 1 <= f <= self.video_frames for f in self.window):
            raise bad(f"window must be a non-empty list of frame numbers 1..{self.video_frames}")
        if self.kind == "window" and self.window[len(self.window) // 2] != min(self.frame, self.video_frames):
            raise bad(f"window {self.window} does not show frame {self.frame} at position {len(self.window) // 2}")
        w = len(self.window)
        if self.kind == "window" and self.targets == [w // 2]:
            # one annotated frame (A2D, JHMDB): MTTR's window around it, clamped to the decoded video
            centre = self.frame - 1
            expected = [min(max(i, 0), self.video_frames - 1) + 1 for i in range(centre - w // 2, centre + (w + 1) // 2)]
            if self.window != expected:
                raise bad(f"window {self.window} is not MTTR's window of {w} around frame {self.frame} clamped to "
                          f"{self.video_frames} frames ({expected})")
        if len(self.targets) != len(self.target_frames) or len(set(self.targets)) != len(self.targets):
            raise bad("targets and target_frames must be equally long, targets without repeats")
        if not all(isinstance(p, int) and 0 <= p < len(self.window) for p in self.targets):
            raise bad(f"targets must be positions of the window (0..{len(self.window) - 1})")
        if self.kind == "window" and not self.targets:
            raise bad("a window sample needs at least one target")
        if self.targets and self.instance_id < 0:
            raise bad("a sample with targets needs the referred instance_id")
        if self.targets and self.instance_id not in self.short_instance_ids:
            raise bad("short_instance_ids must contain the referred instance")
        for name in ("size", "orig_size"):
            v = getattr(self, name)
            if len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v):
                raise bad(f"{name} must be [h, w] positive integers")


MANIFEST_FIELDS = {
    "schema": str, "version": int, "dataset": str, "source": str, "created": str,
    "short_text": dict, "window": int, "resolution": dict, "codec": dict, "decoder": str, "settings_hash": str,
    "counts": dict, "shards": list, "records_file": str, "report_file": str, "splits": dict, "eval_split": str,
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
    for name, info in manifest["splits"].items():
        if name not in SPLITS or not isinstance(info, dict) or info.get("kind") not in SPLIT_KINDS \
                or not isinstance(info.get("masks"), bool):
            raise SchemaError(f"{where}: splits[{name!r}] must be a split of {SPLITS} with its kind and masks")
    if manifest["eval_split"] not in manifest["splits"]:
        raise SchemaError(f"{where}: eval_split {manifest['eval_split']!r} is not one of its splits")
    return manifest


def still_images(manifest: dict, split: str) -> bool:
    """Whether `split` of a prepared set holds still images (kind "image"), whose clips training makes."""
    return manifest["splits"].get(split, {}).get("kind") == "image"
