"""Output folders that may hold a user's data: refused when not empty, replaced only whole and only when the command
wrote them itself.

    check_writable_folder(out, "choose an empty folder")   # FolderNotEmpty when `out` is a file
    publish_folder(stage, out)     # the finished staging folder becomes `out` (the old `out`, if any, removed)
    fill_empty_folder(stage, out)  # its entries move into the empty folder `out` (which stays: a shell's cwd, ...)

What counts as "the command's own" is the caller's to decide (a marker file, a manifest): this module only lists,
refuses and renames.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from losh.schemas.atomic import staging_path


class FolderNotEmpty(ValueError):
    """An output folder holds data that the command did not write: refused, nothing in it touched."""


def folder_names(folder: str | os.PathLike) -> list[str]:
    """The names in `folder`, sorted; [] when it does not exist."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def check_writable_folder(out: str | os.PathLike, advice: str) -> None:
    """FolderNotEmpty when `out` exists but is not a folder (a file, a dangling link): it cannot become one."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise FolderNotEmpty(f"{out} exists and is not a folder: {advice}")


def files_below(folder: str | os.PathLike) -> tuple[set[str], set[str]]:
    """(files, folders) under `folder`, as paths relative to it with '/' (links are listed, not followed)."""
    folder = Path(folder)
    files, folders = set(), set()
    for here, dirs, names in os.walk(folder):
        base = Path(here).relative_to(folder)
        for name in dirs:
            (files if (Path(here) / name).is_symlink() else folders).add((base / name).as_posix())
        files.update((base / name).as_posix() for name in names)
    return files, folders


def publish_folder(stage: str | os.PathLike, out: str | os.PathLike) -> None:
    """Renames the finished `stage` to `out`. An existing `out` (the caller checked that it may go: empty, or its
    own) is first renamed aside, so that `out` is at every moment the old folder or the new one, then removed."""
    stage, out = Path(stage), Path(out)
    if not (out.exists() or out.is_symlink()):
        os.replace(stage, out)
        return
    old = staging_path(out, ".old-")
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)   # this process's own, left by an earlier call that failed
    os.replace(out, old)
    os.replace(stage, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def fill_empty_folder(stage: str | os.PathLike, out: str | os.PathLike, first: str | None = None) -> None:
    """Moves the entries of the finished `stage` into the existing empty folder `out` (`first` first), then removes
    `stage`. `out` itself stays (its permissions, a mount point, a shell that has it as its working folder)."""
    stage, out = Path(stage), Path(out)
    names = folder_names(stage)
    for name in sorted(names, key=lambda n: n != first):
        os.replace(stage / name, out / name)
    stage.rmdir()
