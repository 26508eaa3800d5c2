"""A user's video as frames for `losh predict`: a video file (any PyAV/FFmpeg format) or a folder of images, read
as a stream at the model's input size (`losh.inference.video_inference.FrameSource`), and again at the video's own
size for the overlay."""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from losh.errors import PredictError, PredictUsageError
from losh.pipeline.video import VideoUnreadable, probe_frame_rate, resize_frame, stream_frames, target_size
from losh.schemas.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FOLDER_FPS = 24                                                    # the overlay's rate for a folder of frames


def natural_key(name: str) -> list:
    """Sort key putting 2.png before 10.png (digit runs compare as numbers, the rest case-insensitively)."""
    return [(0, int(part), part) if part.isdigit() else (1, part.lower(), part) for part in re.split(r"(\d+)", name)
            if part]


def _decoded(path: Path) -> Iterator[tuple[int, object]]:
    """`losh.pipeline.video.stream_frames`, its errors as `PredictError`."""
    try:
        yield from stream_frames(path)
    except VideoUnreadable as e:
        raise PredictError(str(e)) from e


class VideoFileFrames:
    """A video file (any PyAV/FFmpeg format: .mp4, .avi, ...) as a streaming `FrameSource`.

    The constructor decodes the video once without converting frames, to count the frames to keep (all of
    them, or with `fps` the first frame of each 1/fps-second slot of timestamps) and learn its size and rate.
    `read` then decodes sequentially, keeping at most `history` recent resized frames (reads must go
    forward, apart from re-reading up to `history` frames; anything earlier restarts decoding, counted in
    `passes`). `peak_held` is the most decoded frames held at once. `originals()` decodes again, a frame
    at a time, at the video's own size.
    """

    def __init__(self, path: Path, *, short_side: int, max_long_side: int, fps: float | None = None,
                 history: int = 16, progress: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise PredictError(f"video file not found: {self.path}")
        if fps is not None and not fps > 0:
            raise PredictUsageError(f"--fps must be positive, got {fps}")
        self.history = max(1, int(history))
        self.passes = 0
        self.peak_held = 0
        kept: list[int] = []
        times: list[float] = []
        size = None
        first_time, last_slot = None, -1
        try:
            native = probe_frame_rate(self.path)
        except VideoUnreadable as e:
            raise PredictError(str(e)) from e
        self.passes += 1
        for n, frame in progress_bar(_decoded(self.path), desc="count frames", unit="frame", disable=not progress,
                             leave=False):
            if size is None:
                size = (frame.height, frame.width)
            t = frame.time if frame.time is not None else (n / native if native else float(n))
            if fps is not None:
                first_time = t if first_time is None else first_time
                slot = int(np.floor((t - first_time) * fps + 1e-6))
                if slot <= last_slot:
                    continue
                last_slot = slot
            kept.append(n)
            times.append(round(float(t), 6))
        if not kept:
            raise PredictError(f"no decodable frame in {self.path}")
        self.frame_ids = kept                        # decoded ordinal of each kept frame
        self.frame_times = times                     # its timestamp (s)
        self.original_size = size
        self._size = target_size(*size, short_side, max_long_side)
        self.native_fps = native
        if fps is not None:
            self.fps = min(float(fps), native) if native else float(fps)
        else:
            self.fps = native or float(FOLDER_FPS)
        self._ring: OrderedDict[int, np.ndarray] = OrderedDict()
        self._stream: Iterator[tuple[int, object]] | None = None
        self._next = 0                               # the next kept index the decoder yields

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _kept(self) -> Iterator[tuple[int, object]]:
        """(kept index, av frame) of the kept frames, in order."""
        self.passes += 1
        k = 0
        for n, frame in _decoded(self.path):
            if k == len(self.frame_ids):
                return
            if n == self.frame_ids[k]:
                yield k, frame
                k += 1
        if k < len(self.frame_ids):
            raise PredictError(f"{self.path}: decoding stopped at frame {k} of {len(self.frame_ids)} "
                               f"(the file changed or is damaged)")

    def read(self, indices: list[int]) -> np.ndarray:
        out = []
        for i in indices:
            if i not in self._ring:
                if self._stream is None or i < self._next:
                    self._ring.clear()
                    self._stream, self._next = self._kept(), 0
                while self._next <= i:
                    k, frame = next(self._stream)
                    self._ring[k] = resize_frame(frame.to_ndarray(format="rgb24"), self._size)
                    self._next = k + 1
                    while len(self._ring) > self.history:
                        self._ring.popitem(last=False)
                    self.peak_held = max(self.peak_held, len(self._ring))
            out.append(self._ring[i])
        return np.stack(out)

    def originals(self) -> Iterator[tuple[int, np.ndarray]]:
        """(kept index, RGB uint8 frame at the video's size), one at a time."""
        for k, frame in self._kept():
            yield k, frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        self._ring.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class FolderFrames:
    """A folder of frames (.jpg/.jpeg/.png, sorted naturally: 2.png before 10.png) as a `FrameSource`. The
    video's size is the first frame's; frames of another size are resized to it."""

    def __init__(self, folder: Path, *, short_side: int, max_long_side: int) -> None:
        self.path = Path(folder)
        if not self.path.is_dir():
            raise PredictError(f"frame folder not found: {self.path}")
        self.files = sorted((p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise PredictError(f"no frames in {self.path} (expected {'/'.join(IMAGE_SUFFIXES)} files)")
        self.original_size = self._image(0).shape[:2]
        self._size = target_size(*self.original_size, short_side, max_long_side)
        self.frame_ids = list(range(len(self.files)))
        self.fps = float(FOLDER_FPS)
        self.native_fps = None
        self.passes = 0
        self.peak_held = 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _image(self, i: int) -> np.ndarray:
        image = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if image is None:
            raise PredictError(f"cannot read frame {self.files[i]}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _original(self, i: int) -> np.ndarray:
        image = self._image(i)
        if image.shape[:2] != tuple(self.original_size):
            image = resize_frame(image, self.original_size)
        return image

    def read(self, indices: list[int]) -> np.ndarray:
        self.peak_held = max(self.peak_held, len(indices))
        return np.stack([resize_frame(self._original(i), self._size) for i in indices])

    def originals(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(len(self.files)):
            yield i, self._original(i)

    def close(self) -> None:
        pass


def open_frames(video: Path, *, short_side: int, max_long_side: int, fps: float | None = None,
                history: int = 16, progress: bool = False) -> VideoFileFrames | FolderFrames:
    """A folder of frames or a video file, as a streaming `FrameSource` at the model's input size."""
    video = Path(video)
    if video.is_dir():
        if fps is not None:
            raise PredictUsageError("--fps samples a video file by its timestamps; a folder of frames has none")
        return FolderFrames(video, short_side=short_side, max_long_side=max_long_side)
    if not video.exists():
        raise PredictError(f"no video or frame folder at {video}")
    return VideoFileFrames(video, short_side=short_side, max_long_side=max_long_side, fps=fps, history=history,
                           progress=progress)
