"""Contract of the precomputed optical flows of a prepared data set (`losh compute-flows --data PREP`).

PREP/flows/index.json   written last: schema + version, parameters and their hash, one entry per
                        video {video_id, file, frames, inputs_hash, frame_size, grid}, counts
PREP/flows/<video_id>.h5
    attrs: schema, version, video_id, params (JSON), params_hash, inputs_hash, prep_shard_hash,
           frame_size [h, w], grid [gh, gw], vector_scale [sx, sy], units, dtype, compression
    frames   int32 (K,)               annotated frame numbers (1-based, ascending)
    targets  int32 (K, O)             stored frame number each flow goes to (k + t clamped to the video)
    valid    bool  (K, O)             k + t lies inside the video (False: clamped, the flow is to the end frame)
    flows    dtype (K, O, 2, gh, gw)  flow from frame k to targets[k, o]; channel 0 = x, 1 = y, in pixels of
                                      the stored grid, rounded to multiples of `quant_step` (when set)
A shard exists only once complete (temporary name, then rename).

Convention (OpenCV's): frame_k(y, x) ~= frame_target(y + flow[1, y, x], x + flow[0, y, x]).
The grid has ceil(h / stride) x ceil(w / stride) cells, the flow field is resized to it with
cv2.INTER_AREA and its x / y components multiplied by gw / w and gh / h (exactly 1 / stride when the
frame size is a multiple of the stride).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losh.schemas.prepared import SPLITS, SchemaError, check_version

FLOWS_SCHEMA = "losh.flows"
FLOWS_VERSION = 1
DTYPES = ("float16", "float32")
UNITS = "pixels of the stored grid"
INDEX_FILE = "index.json"
FLOWS_DIR = "flows"
INDEX_FIELDS = {"schema": str, "version": int, "created": str, "params": dict, "params_hash": str,
                "prep_settings_hash": str, "videos": list, "counts": dict}
SHARD_ATTRS = ("schema", "version", "video_id", "params", "params_hash", "inputs_hash", "prep_shard_hash",
               "frame_size", "grid", "vector_scale", "units", "dtype", "compression")


@dataclass(frozen=True)
class FarnebackParams:
    """Arguments of cv2.calcOpticalFlowFarneback. The paper does not give its values; these are
    OpenCV's documented example (samples/python/opt_flow.py, the tutorial)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    flags: int = 0

    def validate(self) -> None:
        if not 0 < self.pyr_scale < 1:
            raise ValueError(f"pyr_scale must be in (0, 1), got {self.pyr_scale}")
        if self.levels < 1 or self.winsize < 1 or self.iterations < 1:
            raise ValueError("levels, winsize and iterations must be >= 1")
        if self.poly_n not in (5, 7):
            raise ValueError(f"poly_n must be 5 or 7 (OpenCV), got {self.poly_n}")
        if self.poly_sigma <= 0:
            raise ValueError("poly_sigma must be > 0")


def parse_compression(spec: str) -> dict[str, Any]:
    """h5py dataset keywords of a compression spec: none | lzf | gzip-N (N 0..9), optionally with
    the byte-shuffle filter first: shuffle+lzf, shuffle+gzip-N."""
    rest = spec
    kwargs: dict[str, Any] = {}
    if rest.startswith("shuffle+"):
        kwargs["shuffle"] = True
        rest = rest[len("shuffle+"):]
    if rest == "none" and not kwargs:
        return kwargs
    if rest == "lzf":
        return {**kwargs, "compression": "lzf"}
    if rest.startswith("gzip-") and rest[5:].isdigit() and 0 <= int(rest[5:]) <= 9:
        return {**kwargs, "compression": "gzip", "compression_opts": int(rest[5:])}
    raise ValueError(f"unknown compression {spec!r}: use none, lzf, gzip-N (N 0..9), shuffle+lzf or shuffle+gzip-N")


@dataclass(frozen=True)
class FlowParams:
    """Everything that determines the stored flows; its hash identifies a set of flow shards."""

    offsets: tuple[int, ...] = (-2, -1, 1, 2)
    farneback: FarnebackParams = field(default_factory=FarnebackParams)
    stride: int = 4
    dtype: str = "float16"
    compression: str = "shuffle+gzip-4"
    # Values are rounded to multiples of this many grid pixels before the cast (None: no rounding).
    # Zeroing the low mantissa bits lets gzip shrink the shards ~2.5x (bench/flows.py); a power of
    # two keeps the rounded values exact in float16 up to 2048 steps (32 grid pixels for 1/64).
    quant_step: float | None = 1 / 64

    def validate(self) -> "FlowParams":
        if not self.offsets or len(set(self.offsets)) != len(self.offsets) or 0 in self.offsets:
            raise ValueError(f"offsets must be distinct and non-zero, got {list(self.offsets)}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.quant_step is not None and not self.quant_step > 0:
            raise ValueError(f"quant_step must be > 0 (or None: no rounding), got {self.quant_step}")
        parse_compression(self.compression)
        self.farneback.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["offsets"] = list(self.offsets)
        d["units"] = UNITS
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "params") -> "FlowParams":
        try:
            return cls(offsets=tuple(int(o) for o in d["offsets"]), farneback=FarnebackParams(**d["farneback"]),
                       stride=int(d["stride"]), dtype=d["dtype"], compression=d["compression"],
                       quant_step=None if d["quant_step"] is None else float(d["quant_step"])).validate()
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"{where}: malformed flow parameters ({e})") from e

    def hash(self) -> str:
        spec = {"version": FLOWS_VERSION, **self.to_dict()}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Cells of the stored grid: the stride-s feature map of a backbone that pads to a multiple of s."""
        return math.ceil(height / self.stride), math.ceil(width / self.stride)

    def storage_error(self, flow: np.ndarray) -> np.ndarray:
        """Largest error of storing these float32 flow values: rounding to quant_step, then to dtype."""
        magnitude = np.abs(flow)
        error = np.full_like(magnitude, 0.0 if self.quant_step is None else self.quant_step / 2)
        if self.dtype == "float16":
            error += (magnitude + error) * 2.0 ** -11 + 2.0 ** -25   # half an ulp; 2^-25 covers subnormals
        return error


def validate_index(index: dict, where: str = "flows/index.json") -> dict:
    check_version(index, where, FLOWS_SCHEMA, FLOWS_VERSION)
    for name, typ in INDEX_FIELDS.items():
        if name not in index:
            raise SchemaError(f"{where}: missing field {name!r}")
        if not isinstance(index[name], typ):
            raise SchemaError(f"{where}: field {name!r} must be {typ.__name__}")
    params = FlowParams.from_dict(index["params"], where)
    if params.hash() != index["params_hash"]:
        raise SchemaError(f"{where}: params_hash {index['params_hash']} does not match its parameters "
                          f"({params.hash()}); re-run `losh compute-flows`")
    for i, entry in enumerate(index["videos"]):
        for name, typ in (("video_id", str), ("file", str), ("frames", list), ("inputs_hash", str),
                          ("frame_size", list), ("grid", list)):
            if not isinstance(entry.get(name), typ):
                raise SchemaError(f"{where}: videos[{i}] lacks {name!r} ({typ.__name__})")
    return index


def check_shard_attrs(attrs: dict, index: dict, where: str) -> None:
    """The shard belongs to this contract and was computed with the parameters of the index."""
    missing = [a for a in SHARD_ATTRS if a not in attrs]
    if missing:
        raise SchemaError(f"{where}: not a complete flow shard (missing attributes {missing})")
    check_version({"schema": attrs["schema"], "version": int(attrs["version"])}, where, FLOWS_SCHEMA, FLOWS_VERSION)
    if attrs["params_hash"] != index["params_hash"]:
        raise SchemaError(f"{where}: computed with other parameters (hash {attrs['params_hash']}) than "
                          f"flows/index.json says ({index['params_hash']}); re-run `losh compute-flows`")


def flows_dir(prep: Path) -> Path:
    return Path(prep) / FLOWS_DIR


def index_splits(index: dict) -> tuple[str, ...]:
    """The splits whose annotated frames a flows/index.json covers (an index without `splits`: all)."""
    splits = index.get("splits", list(SPLITS))
    if not isinstance(splits, list) or not splits or not set(splits) <= set(SPLITS):
        raise SchemaError(f"flows/index.json: `splits` must be a non-empty list of {SPLITS}, got {splits!r}")
    return tuple(s for s in SPLITS if s in splits)
