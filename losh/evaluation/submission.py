"""Refer-YouTube-VOS submission zip for the CodaLab server.

Layout, as MTTR (``trainer.py``: ``shutil.make_archive(..., base_dir='Annotations')``) and
ReferFormer (``docs/Ref-Youtube-VOS.md``: ``zip -q -r submission.zip Annotations``) build it: the
zip's top level is the ``Annotations/`` folder, holding
``Annotations/<video_id>/<expression_id>/<frame_name>.png``, one single-channel 8-bit PNG (mode
"L") per frame with 0 for background and 255 for the referred object. Like both of those archives,
the zip also holds the folder entries.

:class:`SubmissionWriter` streams the PNGs straight into the zip (no folder tree of ~100k files
on disk) and writes it atomically: a temporary file next to the target, renamed into place only
when the ``with`` block ends without an error.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

ROOT = "Annotations"
_ENTRY = re.compile(rf"^{ROOT}/([^/]+)/([^/]+)/([^/]+)\.png$")


class SubmissionWriter:
    """``with SubmissionWriter(path) as writer: writer.add(video_id, expression_id, frame_name, mask)``."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._zip: zipfile.ZipFile | None = None
        self._file = None
        self._tmp_path: Path | None = None
        self._entries: set[tuple[str, str, str]] = set()
        self._folders: set[str] = set()

    def __enter__(self) -> SubmissionWriter:
        if self._zip is not None:
            raise RuntimeError("this SubmissionWriter is already open")
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # same folder as the target, so the final rename stays on one file system and is atomic
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp_path = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED)
        self._add_folder(f"{ROOT}/")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._zip is not None and self._file is not None and self._tmp_path is not None
        try:
            if exc_type is None:
                self._zip.close()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self._tmp_path, self.path)
        finally:
            if not self._file.closed:  # an error above or inside the with block: leave no zip behind
                with contextlib.suppress(Exception):  # the error being raised is the one to report
                    self._zip.close()
                self._file.close()
            if self._tmp_path.exists():
                self._tmp_path.unlink()
            self._zip = self._file = self._tmp_path = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, video_id: str, expression_id: str, frame_name: str, mask: np.ndarray) -> None:
        """Writes one frame's mask: an HxW bool array, or integers / floats holding only 0/1 or 0/255."""
        if self._zip is None:
            raise RuntimeError("SubmissionWriter.add must be called inside its `with` block")
        key = (str(video_id), str(expression_id), str(frame_name))
        for what, name in zip(("video id", "expression id", "frame name"), key):
            _check_name(what, name)
        if key in self._entries:
            raise ValueError(f"duplicate submission entry {_entry_name(*key)}")
        png = _encode_png(_to_binary(mask, key))
        video_folder = f"{ROOT}/{key[0]}/"
        self._add_folder(video_folder)
        self._add_folder(f"{video_folder}{key[1]}/")
        self._zip.writestr(_entry_name(*key), png)
        self._entries.add(key)

    def _add_folder(self, name: str) -> None:
        if name not in self._folders:
            info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])  # a name ending in "/" is a folder
            info.external_attr = (0o40755 << 16) | 0x10  # Unix drwxr-xr-x and the MS-DOS folder flag, as `zip` sets
            self._zip.writestr(info, b"")
            self._folders.add(name)


def read_submission(path: str | os.PathLike) -> dict[tuple[str, str, str], np.ndarray]:
    """{(video_id, expression_id, frame_name): HxW uint8 mask as stored (0 / 255)}."""
    masks = {}
    with zipfile.ZipFile(path) as archive:
        for info, match in _files(archive):
            if match is None:
                raise ValueError(f"{path}: unexpected entry {info.filename!r} (not {ROOT}/<video>/<expression>/<frame>.png)")
            with Image.open(io.BytesIO(archive.read(info))) as image:
                masks[match.groups()] = np.array(image)
    return masks


def check_submission(path: str | os.PathLike, expected: Mapping[str, Mapping[str, Sequence[str]]]) -> list[str]:
    """Problems with a submission zip, given {video_id: {expression_id: [frame names]}}: missing
    videos, expressions and frames, unexpected entries, and PNGs that are not mode "L" with only
    the values 0 and 255. An empty list means the zip is complete."""
    problems = []
    present: dict[str, dict[str, set[str]]] = {}
    with zipfile.ZipFile(path) as archive:
        for info, match in _files(archive):
            if match is None:
                problems.append(f"unexpected entry {info.filename!r}")
                continue
            video, expression, frame = match.groups()
            if frame not in expected.get(video, {}).get(expression, ()):
                problems.append(f"unexpected entry {info.filename!r}")
            present.setdefault(video, {}).setdefault(expression, set()).add(frame)
            problem = _png_problem(archive.read(info))
            if problem:
                problems.append(f"{info.filename}: {problem}")
    for video, expressions in expected.items():
        if video not in present:
            problems.append(f"missing video {video!r}")
            continue
        for expression, frames in expressions.items():
            if expression not in present[video]:
                problems.append(f"missing expression {video!r}/{expression!r}")
                continue
            problems += [
                f"missing frame {_entry_name(video, expression, frame)}"
                for frame in frames
                if frame not in present[video][expression]
            ]
    return problems


def _files(archive: zipfile.ZipFile) -> Iterator[tuple[zipfile.ZipInfo, re.Match | None]]:
    """The zip's files (not folders), each with its match of Annotations/<video>/<expression>/<frame>.png."""
    for info in archive.infolist():
        if not info.is_dir():
            yield info, _ENTRY.match(info.filename)


def _entry_name(video_id: str, expression_id: str, frame_name: str) -> str:
    return f"{ROOT}/{video_id}/{expression_id}/{frame_name}.png"


def _check_name(what: str, name: str) -> None:
    # each name is one path component of the zip entry; the frame name is the stem, the writer adds ".png"
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"invalid {what} {name!r}: it must be one non-empty path component")
    if what == "frame name" and name.lower().endswith(".png"):
        raise ValueError(f"frame name {name!r} must be given without the .png extension")


def _to_binary(mask: np.ndarray, key: tuple[str, str, str]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"mask for {_entry_name(*key)} must be a non-empty HxW array, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    values = set(np.unique(mask).tolist())
    # probabilities or label maps must be turned into a binary mask by the caller, not guessed at here
    if values <= {0, 1}:
        return mask == 1
    if values <= {0, 255}:
        return mask == 255
    shown = sorted(values)[:5]
    raise ValueError(f"mask for {_entry_name(*key)} is not binary (values {shown}...): give bool, 0/1 or 0/255")


def _encode_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))  # 2-D uint8 -> mode "L"
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_problem(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode != "L":
                return f"PNG mode {image.mode!r}, expected 'L' (single-channel 8-bit)"
            values = set(np.unique(np.array(image)).tolist())
    except Exception as error:  # a corrupt entry is a problem to report, not a crash of the check
        return f"unreadable PNG ({error})"
    if not values <= {0, 255}:
        return f"values {sorted(values)[:5]} besides 0 and 255"
    return None
