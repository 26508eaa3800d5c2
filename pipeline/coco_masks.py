"""COCO object masks: an annotation's `segmentation` (polygons, or run-length encoding) as a binary mask, decoded as
pycocotools' `COCO.annToMask` decodes it (the refer toolkit's `getMask` does the same):

    polygons            [[x1, y1, x2, y2, ...], ...]       frPyObjects, merged, decoded
    uncompressed RLE    {"counts": [int, ...], "size": [h, w]}   (crowd objects) frPyObjects, decoded
    compressed RLE      {"counts": "string", "size": [h, w]}     decoded as it is
"""
from __future__ import annotations

import warnings

import numpy as np


def segmentation_problem(segmentation: object, height: int, width: int) -> str | None:
    """What keeps a `segmentation` from being decoded on an image of `height` x `width` (None: nothing)."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "an empty polygon list"
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in polygon):
                return "a polygon that is not a list of numbers"
            if len(polygon) < 4 or len(polygon) % 2:
                return f"a polygon of {len(polygon)} coordinates (x, y pairs expected)"
        return None
    if isinstance(segmentation, dict):
        counts, size = segmentation.get("counts"), segmentation.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            return "a run-length encoding without its [height, width] size"
        if list(size) != [height, width]:
            return f"a run-length encoding of size {size[0]}x{size[1]} on an image of {height}x{width}"
        if isinstance(counts, list):
            if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
                return "an uncompressed run-length encoding whose counts do not cover the image"
            return None
        if not isinstance(counts, str) or not counts:
            return "a run-length encoding without counts"
        return None
    return f"a segmentation of type {type(segmentation).__name__} (polygons or run-length encoding expected)"


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of a COCO segmentation (checked with `segmentation_problem` first)."""
    from pycocotools import mask as coco_mask  # only where COCO masks are read (not on every machine)

    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():   # pycocotools' array wrapper predates NumPy 2's `copy` keyword: said per mask
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle).astype(bool)
