"""Ground-truth masks at the resolution that scores are computed at.

MTTR scores A2D/JHMDB at the original video size (`orig_size`: its post-processing resizes the
thresholded masks back to it). Where a sample was prepared at its original size, the stored mask is
the original one; where prepare-data resized it, the shard keeps the original masks too (the resized
one, nearest neighbour, is not the ground truth MTTR scores against). A2D data prepared without them
(or a `raw` folder given) reads the original mask from the raw data set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from losh.schemas.prepared import SampleRecord, SchemaError
from losh.schemas.prepared_reader import PreparedDataset

RESOLUTIONS = ("original", "prepared")


class GroundTruth:
    """The long (referred) mask of a record at `resolution` ('original' or 'prepared')."""

    def __init__(self, data: PreparedDataset, resolution: str = "original", raw: Path | None = None) -> None:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.resolution = resolution
        self.data = data
        self.dataset = data.manifest["dataset"]
        self.raw_given = raw
        self.raw = Path(raw) if raw is not None else Path(data.manifest["source"])

    def size(self, record: SampleRecord) -> tuple[int, int]:
        return tuple(record.orig_size if self.resolution == "original" else record.size)

    def long_mask(self, record: SampleRecord, prepared_mask: np.ndarray) -> np.ndarray:
        """`prepared_mask` (the stored one) when it is at the scoring size, else the raw original mask."""
        size = self.size(record)
        if tuple(prepared_mask.shape) == size:
            return prepared_mask
        if self.raw_given is None:
            kept = self.data.original_mask(record)
            if kept is not None and kept.shape == size:
                return kept
        if self.dataset != "a2d":
            raise SchemaError(f"original-resolution scoring of {self.dataset!r} samples prepared at another size "
                              "is not supported: use --resolution prepared")
        from losh.pipeline.datasets.a2d import CorruptMaskFile, read_frame_annotation
        path = self.raw / "text_annotations" / "a2d_annotation_with_instances" / record.video_id / f"{record.frame:05d}.h5"
        if not path.exists():
            raise FileNotFoundError(f"sample {record.sample_id} was prepared at {record.size[0]}x{record.size[1]}, "
                                    f"its video is {size[0]}x{size[1]}: original-resolution scoring reads its mask "
                                    f"from the raw data set, {path} is missing (pass --raw ROOT, or --resolution "
                                    "prepared)")
        try:
            ids, masks = read_frame_annotation(path)
        except CorruptMaskFile as e:
            raise SchemaError(str(e)) from e
        found = np.flatnonzero(ids == record.instance_id)
        if len(found) == 0 or masks.shape[1:] != size:
            raise SchemaError(f"{path}: no mask of size {size} for instance {record.instance_id} of sample "
                              f"{record.sample_id}: is --raw the data set that PREP was prepared from?")
        return masks[found[0]]
