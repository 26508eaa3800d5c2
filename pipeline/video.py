"""Video decoding, resizing, frame windows and H.264 writing: the only place that touches video files."""
from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np


class VideoUnreadable(RuntimeError):
    """The video is missing, cannot be opened, or yields fewer frames than needed."""


class NoVideoEncoder(RuntimeError):
    """FFmpeg (PyAV) has no encoder to write the video with."""


def window_indices(frame: int, num_frames: int, window: int) -> list[int]:
    """0-based indices of the `window` frames around 1-based annotated `frame`.

    MTTR's convention: from f-1-w//2 to f-1+(w+1)//2 (exclusive), clamped to the video, so the
    annotated frame sits at position w//2 and the ends repeat the first/last frame.
    """
    center = frame - 1
    return [min(max(i, 0), num_frames - 1) for i in range(center - window // 2, center + (window + 1) // 2)]


def target_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(h, w) after MTTR's resize: short side to `short_side`, long side capped at `max_long_side`."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_long_side:
        scale = max_long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    shrinking = h < frame.shape[0]
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (N, H, W) binary masks, so labels stay binary."""
    h, w = size
    if masks.shape[1:] == (h, w):
        return masks.astype(bool)
    out = np.zeros((masks.shape[0], h, w), dtype=bool)
    for i, m in enumerate(masks):
        out[i] = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return out


DECODERS = ("pyav", "opencv")


def count_frames(path: Path, decoder: str = "pyav") -> int:
    """Number of decodable frames (container metadata can lie, so we count by decoding)."""
    return decode_frames(path, set(), to_end=True, decoder=decoder)[1]


def decode_frames(path: Path, wanted: set[int], *, to_end: bool = False,
                  decoder: str = "pyav") -> tuple[dict[int, np.ndarray], int, bool]:
    """Decode the frames at the wanted 0-based indices (BGR uint8) in one sequential pass.

    Returns (frames, number of frames decoded, whether the video ended before the last wanted
    index). When it ended early, its real last frame is kept too, so that windows can be clamped
    to the true length (container metadata can be wrong). With `to_end`, decoding goes on to the
    end of the video (frames past the last wanted one are decoded but not converted), so the count
    is the video's decoded length.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if not Path(path).is_file():
        raise VideoUnreadable(f"video file not found: {path}")
    decode = decode_frames_pyav if decoder == "pyav" else decode_frames_opencv
    return decode(Path(path), wanted, to_end=to_end)


def decode_frames_opencv(path: Path, wanted: set[int], *, to_end: bool = False) -> tuple[dict[int, np.ndarray], int, bool]:
    """`decode_frames` with OpenCV's FFmpeg backend: frames in the order `VideoCapture.read` gives."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoUnreadable(f"cannot open video {path}")
    frames: dict[int, np.ndarray] = {}
    last_wanted = max(wanted) if wanted else -1
    n, previous = 0, None
    try:
        while n <= max(last_wanted, 0):   # at least one frame: the video is readable
            ok, frame = cap.read()
            if not ok:
                break
            if n in wanted:
                frames[n] = frame
            previous = frame
            n += 1
        else:
            while to_end and cap.grab():   # count the rest without converting it
                n += 1
    finally:
        cap.release()
    if n == 0:
        raise VideoUnreadable(f"no decodable frame in {path}")
    ended = n <= last_wanted
    if ended:
        frames[n - 1] = previous
    return frames, n, ended


class _NotInPtsOrder(Exception):
    """The decoder's output is not in strictly increasing pts order: index by sorting instead."""


def decode_frames_pyav(path: Path, wanted: set[int], *, to_end: bool = False) -> tuple[dict[int, np.ndarray], int, bool]:
    """`decode_frames` with PyAV, indexing frames as MTTR's `torchvision.io.read_video(path,
    pts_unit='sec')` does: every decoded frame of the first video stream keyed by its pts (a repeated
    pts keeps the later frame), frames with pts < 0 dropped, the rest sorted by pts; a decoding error
    ends the video there. Pixels are PyAV's rgb24 conversion (read_video's), returned as BGR.

    Decoders output frames in presentation order, so index i is the i-th frame out: decoding stops
    after the last wanted frame (unless `to_end`). A file whose output pts are not strictly increasing
    is decoded again in full and sorted, exactly as read_video does.
    """
    try:
        return _decode_pyav(path, wanted, to_end, sort_all=False)
    except _NotInPtsOrder:
        return _decode_pyav(path, wanted, to_end, sort_all=True)


def _bgr(frame) -> np.ndarray:
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24")[:, :, ::-1])


def _decode_pyav(path: Path, wanted: set[int], to_end: bool, sort_all: bool) -> tuple[dict[int, np.ndarray], int, bool]:
    import av

    last_wanted = max(wanted) if wanted else -1
    frames: dict[int, np.ndarray] = {}
    by_pts: dict[int, object] = {}
    n, previous, previous_pts = 0, None, None
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise VideoUnreadable(f"cannot open video {path}: {e}") from e
    with container:
        if not container.streams.video:
            raise VideoUnreadable(f"no video stream in {path}")
        try:
            for frame in container.decode(video=0):
                pts = frame.pts
                if sort_all:
                    if pts is not None and pts >= 0:
                        by_pts[pts] = frame
                    continue
                if pts is None or (previous_pts is not None and pts <= previous_pts):
                    raise _NotInPtsOrder
                previous_pts = pts
                if pts < 0:
                    continue   # read_video starts at pts 0
                if n in wanted:
                    frames[n] = _bgr(frame)
                previous = frame
                n += 1
                if n > last_wanted and not to_end:
                    break
        except av.FFmpegError:
            pass   # read_video keeps what was decoded before the error
    if sort_all:
        ordered = [by_pts[p] for p in sorted(by_pts)]
        n = len(ordered)
        frames = {i: _bgr(ordered[i]) for i in wanted if i < n}
        previous = ordered[-1] if ordered else None
    if n == 0:
        raise VideoUnreadable(f"no decodable frame in {path}")
    ended = n <= last_wanted
    if ended and n - 1 not in frames:
        frames[n - 1] = _bgr(previous)
    return frames, n, ended


def stream_frames(path: Path) -> Iterator[tuple[int, object]]:
    """(ordinal, av.VideoFrame) of the first video stream, one at a time (nothing held), frames with a negative
    pts dropped (as `decode_frames_pyav`); a decoding error ends the video there. VideoUnreadable when the file
    cannot be opened or has no video stream."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise VideoUnreadable(f"cannot read video {path}: {_first_line(e)}") from e
    with container:
        if not container.streams.video:
            raise VideoUnreadable(f"cannot read video {path}: no video stream")
        container.streams.video[0].thread_type = "AUTO"
        n = 0
        try:
            for frame in container.decode(video=0):
                if frame.pts is not None and frame.pts < 0:
                    continue
                yield n, frame
                n += 1
        except av.FFmpegError:
            return


def probe_frame_rate(path: Path) -> float | None:
    """The first video stream's frame rate (average, else guessed) from the container, None where it has none."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as probe:
            stream = probe.streams.video[0] if probe.streams.video else None
            rate = (stream.average_rate or stream.guessed_rate) if stream is not None else None
    except (av.FFmpegError, OSError) as e:
        raise VideoUnreadable(f"cannot read video {path}: {_first_line(e)}") from e
    return float(rate) if rate else None


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _even(frame: np.ndarray) -> np.ndarray:
    """Padded by edge replication to even height and width (yuv420p needs them)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class H264Writer:
    """H.264 (yuv420p, faststart) MP4 written frame by frame with PyAV: what browsers and common players open.
    Falls back to MPEG-4 part 2 when FFmpeg has no H.264 encoder (`codec` says which)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, *, crf: int = 20, preset: str = "veryfast"
                 ) -> None:
        import av

        self.path = Path(path)
        self.container = av.open(str(self.path), "w", options={"movflags": "+faststart"})
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(24)
        self.stream = None
        for codec, options in (("libx264", {"crf": str(crf), "preset": preset}), ("h264", {}),
                               ("mpeg4", {"qscale": "3"})):
            try:
                self.stream = self.container.add_stream(codec, rate=rate, options=options)
                self.codec = codec
                break
            except (av.FFmpegError, ValueError, KeyError):
                continue
        if self.stream is None:
            self.container.close()
            raise NoVideoEncoder("this FFmpeg (PyAV) has no H.264 or MPEG-4 encoder")
        h, w = size
        self.stream.height, self.stream.width = h + h % 2, w + w % 2
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(rgb)), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None


def write_h264(path: Path, frames: np.ndarray, fps: int = 24, crf: int = 18) -> Path:
    """(T, H, W, 3) RGB uint8 frames -> an H.264 (yuv420p) video at `path` (`H264Writer`): the kind of file users
    bring to `losh predict` (tests and benchmarks write theirs with it)."""
    writer = H264Writer(Path(path), frames.shape[1:3], fps, crf=crf, preset="ultrafast")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.close()
    return Path(path)
