"""How prepared frames are stored: encoded images in HDF5 (raw windows of the full A2D set would
take ~50 GB; see README "Storage" for the measurements behind the default)."""
from __future__ import annotations

import cv2
import numpy as np

CODECS = ("jpeg", "png")


def encode_frame(frame_bgr: np.ndarray, codec: str = "jpeg", quality: int = 90) -> np.ndarray:
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif codec == "png":
        ok, buf = cv2.imencode(".png", frame_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"unknown frame codec {codec!r}; choose one of {CODECS}")
    if not ok:
        raise RuntimeError(f"could not encode a frame as {codec}")
    return buf.reshape(-1)


def decode_frame(buffer: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) from an encoded buffer."""
    frame = cv2.imdecode(np.asarray(buffer, dtype=np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise ValueError("corrupt encoded frame in shard")
    return frame
