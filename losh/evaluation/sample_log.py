"""Per-sample results of an evaluation, kept in its folder so that its report can be made again later
(`losh report EVAL`) without the model:

    EVAL/samples.jsonl            one line a sample: sample_id, video_id, frame, long and short expression, iou
                                  (whole-video sets: the expression's J as iou, with j and f), score, thumbnail
    EVAL/thumbnails/<id>.jpg      a small overlay of each: the prediction tinted red, the ground truth outlined green
    EVAL/overlays/<id>.jpg        larger ground truth | prediction pictures of the 20 worst and the 20 best samples
"""
from __future__ import annotations

import heapq
import itertools
import json
import shutil
from pathlib import Path

import numpy as np

from losh.inference.drawing import comparison_picture, jpeg_bytes, resized_to_width, thumbnail
from losh.schemas.atomic import atomic_path, atomic_write_text
from losh.schemas.safe_paths import join_ids

SAMPLES_FILE = "samples.jsonl"
THUMBNAILS, OVERLAYS = "thumbnails", "overlays"
THUMBNAIL_WIDTH, OVERLAY_WIDTH = 160, 560
EXTREMES = 20


class SampleLog:
    """Collects each scored sample (`add`), writes samples.jsonl and the pictures (`close`). Only the extremes'
    larger pictures wait in memory (at most 2 x 20)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        for name in (THUMBNAILS, OVERLAYS):       # an evaluation replaced in its folder leaves no stale picture
            shutil.rmtree(self.folder / name, ignore_errors=True)
            (self.folder / name).mkdir(parents=True)
        self.rows: list[dict] = []
        self._order = itertools.count()
        self._worst: list[tuple] = []   # max-heap on IoU (negated): the 20 lowest so far
        self._best: list[tuple] = []    # min-heap on IoU: the 20 highest so far

    def add(self, row: dict, frame_rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> None:
        """`row`: sample_id, video_id, frame, long, short, iou (and score, j, f where known); the frame (RGB) and
        both masks at one size."""
        row = dict(row)
        name = f"{row['sample_id']}.jpg"
        thumb_path = join_ids(self.folder / THUMBNAILS, name)
        with atomic_path(thumb_path) as tmp:
            tmp.write_bytes(jpeg_bytes(thumbnail(frame_rgb, gt, pred, THUMBNAIL_WIDTH)))
        row["thumbnail"] = f"{THUMBNAILS}/{name}"
        self.rows.append(row)
        iou, order = float(row["iou"]), next(self._order)
        for heap, key in ((self._worst, -iou), (self._best, iou)):
            if len(heap) < EXTREMES or key > heap[0][0]:
                picture = comparison_picture(frame_rgb, row["long"], row["short"], gt, pred, iou=iou)
                item = (key, -order, row["sample_id"], resized_to_width(picture, min(OVERLAY_WIDTH, picture.shape[1])))
                (heapq.heappush if len(heap) < EXTREMES else heapq.heapreplace)(heap, item)

    def close(self) -> list[dict]:
        """Write the extremes' pictures and samples.jsonl; returns the rows."""
        larger = {}
        for _, _, sample_id, picture in self._worst + self._best:
            name = f"{sample_id}.jpg"
            with atomic_path(join_ids(self.folder / OVERLAYS, name)) as tmp:
                tmp.write_bytes(jpeg_bytes(picture, quality=90))
            larger[sample_id] = f"{OVERLAYS}/{name}"
        for row in self.rows:
            if row["sample_id"] in larger:
                row["overlay"] = larger[row["sample_id"]]
        atomic_write_text(self.folder / SAMPLES_FILE, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._worst, self._best = [], []
        return self.rows


def read_samples(folder: Path) -> list[dict]:
    """The rows of EVAL/samples.jsonl."""
    path = Path(folder) / SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {SAMPLES_FILE}: evaluate with --out {folder} (a folder) to keep "
                                "the per-sample results a report needs")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
