"""Atomic file writes: a file appears whole under its name or not at all (every stage writes this way).

    with atomic_path(path) as tmp:      # write to tmp however you like (h5py, cv2, torch.save, ...)
        torch.save(obj, tmp)
    atomic_write_text(path, text); atomic_write_json(path, obj); atomic_copy(source, path)

The temporary file sits beside the target (same file system, so the final rename is atomic), hidden, named
`.<name>.tmp-<pid>-<random><suffix>`: the target's suffix is kept, because some writers choose the format by it
(cv2.VideoWriter, scipy's savemat, PIL); the pid says which process wrote it. On any error the temporary file is
removed and the target is left as it was.

A whole folder is built the same way in `staging_path(target)`, `.<name>.partial-<pid>` beside it, then renamed;
`remove_stale_staging(target)` removes those of processes that are gone (a killed writer's).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMPORARY_MARK = ".tmp-"
STAGING_MARK = ".partial-"     # a folder built beside its target, renamed to it when whole


def temporary_path(path: str | os.PathLike) -> Path:
    """A unique hidden temporary name beside `path` with its suffix: `.<name>.tmp-<pid>-<random><suffix>`."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, *, make_parents: bool = True) -> Iterator[Path]:
    """Yields a temporary path to write; renamed to `path` when the block ends without error."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, newlines as given."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> None:
    """JSON (NaN and infinities refused: they are not JSON), with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files (`atomic_path`'s) of processes that are gone from `folder` (not recursive);
    returns them. A live process's (this one's included) are kept."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".*{TEMPORARY_MARK}*"):
        pid = path.name.split(TEMPORARY_MARK, 1)[1].split("-", 1)[0].split(".", 1)[0]
        if pid.isdigit() and process_alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def staging_path(target: str | os.PathLike, mark: str = STAGING_MARK) -> Path:
    """This process's hidden sibling of `target` to build it in (`.<name><mark><pid>`), renamed to it when whole."""
    target = Path(target)
    return target.parent / f".{target.name}{mark}{os.getpid()}"


def remove_stale_staging(target: str | os.PathLike, mark: str = STAGING_MARK) -> list[Path]:
    """Removes the siblings `.<name><mark><pid>` of `target` (folders or files, `staging_path`'s) whose process is
    gone: what a killed writer left. A live process's (this one's included) are kept. Returns the removed paths."""
    target = Path(target)
    prefix = f".{target.name}{mark}"
    if not target.parent.is_dir():
        return []
    removed = []
    for path in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix):]
        if not pid.isdigit() or process_alive(int(pid)):
            continue   # not a staging name (another target's), or a live writer's
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's live process
        return True
    return True
