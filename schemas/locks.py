"""One writer per folder: a run, a prepared set, its flows.

    with folder_lock(out, "losh train"):      # FolderBusy at once if another live process writes `out`
        ...
    refuse_if_locked(prep, "losh train")      # a reader: FolderBusy while a writer works there

The lock is a file, `<folder>/.losh.lock`, made with O_EXCL (one process wins) and holding the writer's pid,
host, command and start time. A lock whose process died on this host is taken over (a killed run is simply run
again); one held on another host is respected (its process cannot be checked from here): the message says how to
remove it by hand when that host's process is known to be gone.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from losh.schemas.atomic import process_alive

LOCK_NAME = ".losh.lock"


class FolderBusy(RuntimeError):
    """Another live process writes this folder."""


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}                 # being written this instant, or damaged: treated as held


def _busy(folder: Path, holder: dict, what: str) -> FolderBusy:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
    where = holder.get("host", "?")
    hint = ("" if where == socket.gethostname() else
            f"; if that process is gone, remove {folder / LOCK_NAME}")
    return FolderBusy(f"{what}: {folder} is being written by {holder.get('command', 'another process')!r} "
                      f"(pid {holder.get('pid', '?')} on {where}, since {since}): wait for it or stop it{hint}")


def _stale(holder: dict) -> bool:
    return (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
            and holder["pid"] != os.getpid() and not process_alive(holder["pid"]))


def refuse_if_locked(folder: str | os.PathLike, what: str) -> None:
    """FolderBusy when a live process holds `folder`'s lock (a reader must not read a half-written folder)."""
    folder = Path(folder)
    holder = _holder(folder / LOCK_NAME)
    if holder is not None and not _stale(holder) and holder.get("pid") != os.getpid():
        raise _busy(folder, holder, what)


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Holds `folder`'s lock (making the folder) for the block; FolderBusy at once if a live process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
            "argv": " ".join(sys.argv)[:500], "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                continue                              # released meanwhile: try again
            if not _stale(holder):
                raise _busy(folder, holder, what) from None
            path.unlink(missing_ok=True)               # its process died: take it over
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(info, handle)
        break
    else:
        raise FolderBusy(f"{what}: could not take the lock {path}")
    try:
        yield path
    finally:
        holder = _holder(path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == info["host"]:
            path.unlink(missing_ok=True)
