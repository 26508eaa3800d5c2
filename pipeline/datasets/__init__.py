"""Readers of the raw layouts of the RVOS data sets (and of the referring image segmentation sets LoSh-S is
pre-trained on), one file each, behind one interface (`base.py`): each turns its raw root into a `DatasetPlan`
that `losh prepare-data` prepares the same way."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from losh.pipeline.datasets.base import DatasetPlan


def _a2d(root: Path, **_: object) -> DatasetPlan:
    from losh.pipeline.datasets.a2d import plan_a2d
    return plan_a2d(root)


def _refer_youtube_vos(root: Path, *, holdout_videos: int = 0, seed: int = 0, **_: object) -> DatasetPlan:
    from losh.pipeline.datasets.refer_youtube_vos import plan_refer_youtube_vos
    return plan_refer_youtube_vos(root, holdout_videos=holdout_videos, seed=seed)


def _jhmdb(root: Path, *, samples_metadata: Path | None = None, seed: int = 0, **_: object) -> DatasetPlan:
    from losh.pipeline.datasets.jhmdb import plan_jhmdb
    return plan_jhmdb(root, samples_metadata=samples_metadata, seed=seed)


def _refer_davis(root: Path, *, split: str | None = None, **_: object) -> DatasetPlan:
    from losh.pipeline.datasets.refer_davis import plan_refer_davis
    return plan_refer_davis(root, split or "val")


def _refcoco(dataset: str) -> Callable[..., DatasetPlan]:
    def plan(root: Path, *, split_by: str | None = None, images: Path | None = None, **_: object) -> DatasetPlan:
        from losh.pipeline.datasets.refcoco import plan_refcoco
        return plan_refcoco(root, dataset, split_by=split_by, images=images)
    return plan


# SgMg's RefCOCO frames: short side 360, long side at most 640 (its datasets/refexp2seq.py, make_coco_transforms
# "val": RandomResize([360], max_size=640)); a sample is the one image, its clip made at training time
_STILL = {"window": 1, "short_side": 360, "max_long_side": 640}

# data set -> (plan reader, default prepare settings: window, short side, max long side)
DATASETS: dict[str, tuple[Callable[..., DatasetPlan], dict]] = {
    "a2d": (_a2d, {"window": 8, "short_side": 320, "max_long_side": 576}),
    "jhmdb": (_jhmdb, {"window": 8, "short_side": 320, "max_long_side": 576}),
    "refer-youtube-vos": (_refer_youtube_vos, {"window": 12, "short_side": 360, "max_long_side": 640}),
    "refer-davis": (_refer_davis, {"window": 12, "short_side": 360, "max_long_side": 640}),
    "refcoco": (_refcoco("refcoco"), _STILL),
    "refcoco+": (_refcoco("refcoco+"), _STILL),
    "refcocog": (_refcoco("refcocog"), _STILL),
}
# data sets of still images (referring image segmentation): one-frame samples, no optical flow
STILL_IMAGE_DATASETS = ("refcoco", "refcoco+", "refcocog")


# data set -> its reader's options and their defaults (what else than the settings decides a prepared set)
READER_OPTIONS: dict[str, dict[str, object]] = {
    "a2d": {},
    "jhmdb": {"samples_metadata": None, "seed": 0},
    "refer-youtube-vos": {"holdout_videos": 0, "seed": 0},
    "refer-davis": {"split": "val"},
    "refcoco": {"split_by": "unc", "images": None},
    "refcoco+": {"split_by": "unc", "images": None},
    "refcocog": {"split_by": "umd", "images": None},
}


def with_default_options(dataset: str, options: dict[str, object]) -> dict[str, object]:
    """The reader options of `dataset` a call gives, defaults filled in (None: the default); others dropped."""
    defaults = READER_OPTIONS.get(dataset, {})
    return {k: default if options.get(k) is None else options[k] for k, default in defaults.items()}


def plan_dataset(dataset: str, root: Path, **options: object) -> DatasetPlan:
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; one of {', '.join(DATASETS)}")
    return DATASETS[dataset][0](Path(root), **options)
