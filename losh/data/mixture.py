"""Several prepared sets trained on as one (SgMg pre-trains on RefCOCO, RefCOCO+ and RefCOCOg concatenated): every
sample of every set once an epoch, so each set weighs as much as it has samples."""
from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import ConcatDataset

from losh.data.dataset import RVOSDataset


class MixtureDataset(ConcatDataset):
    """The training sets one after the other (`RVOSDataset` or `ClipDataset` each); the loader's sampler shuffles
    across them."""

    def __init__(self, parts: Sequence[RVOSDataset]) -> None:
        super().__init__(list(parts))
        self.parts = list(parts)

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def check_readable(self) -> None:
        for part in self.parts:
            part.check_readable()

    @property
    def texts(self) -> set[str]:
        """Every long and short expression of every set (a tokenizer trained on the fly learns them)."""
        return {t for part in self.parts for r in part.data.records for t in (r.long, r.short)}


def parse_data_list(value: str) -> list[str]:
    """`--data a,b,c`: the prepared sets of a mixture (one path: a list of one)."""
    parts = [p.strip() for p in str(value).split(",")]
    if not all(parts):
        raise ValueError(f"--data {value!r}: an empty path in the list")
    return parts
