"""The folder a `losh synth` writer fills: built whole beside OUT, then renamed to it; never a user's data replaced.

A written set is marked by `.losh-synth.json` (its layout, parameters and the files written). OUT may be missing or
empty; a non-empty OUT is refused, and with `overwrite` replaced only when it is a set `losh synth` wrote and holds
nothing else.

    with synthetic_set(out, "a2d", {"videos": 12, "seed": 0, ...}, overwrite) as root:
        ...write the set under root...
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from losh.schemas.atomic import atomic_write_json, remove_stale_staging, staging_path
from losh.schemas.folders import (
    FolderNotEmpty,
    check_writable_folder,
    files_below,
    fill_empty_folder,
    folder_names,
    publish_folder,
)

SYNTH_MARKER = ".losh-synth.json"
SYNTH_SCHEMA = "losh.synth"
SYNTH_VERSION = 1


def read_marker(folder: Path) -> dict | None:
    """The marker of a set `losh synth` wrote in `folder`, or None (none, or not one of ours)."""
    try:
        marker = json.loads((Path(folder) / SYNTH_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(marker, dict) and marker.get("schema") == SYNTH_SCHEMA and isinstance(marker.get("files"), list)
    return marker if ours else None


def foreign_entries(folder: Path, marker: dict) -> list[str]:
    """Files and folders under `folder` that the marked set does not list: someone else's, never removed."""
    listed = set(marker["files"]) | {SYNTH_MARKER}
    own_folders = {parent.as_posix() for name in listed for parent in Path(name).parents if parent != Path(".")}
    files, folders = files_below(folder)
    return sorted(files - listed) + sorted(folders - own_folders)   # files first: they name the data


def refuse_unless_replaceable(out: Path, overwrite: bool) -> None:
    """FolderNotEmpty (one line, OUT untouched) unless OUT is missing, empty, or (with `overwrite`) a set that
    `losh synth` wrote with nothing added."""
    check_writable_folder(out, "choose an empty or new folder")
    if not folder_names(out):
        return
    if not overwrite:
        raise FolderNotEmpty(f"{out} is not empty: choose an empty folder, or pass --overwrite when it is a "
                             "synthetic set that `losh synth` wrote")
    marker = read_marker(out)
    if marker is None:
        raise FolderNotEmpty(f"{out} is not empty and is not a synthetic set that `losh synth` wrote (no "
                             f"{SYNTH_MARKER}): it is left as it is, also with --overwrite; choose an empty folder")
    foreign = foreign_entries(out, marker)
    if foreign:
        raise FolderNotEmpty(f"{out} holds {len(foreign)} files or folders that `losh synth` did not write (e.g. "
                             f"{foreign[0]}): it is left as it is; move them out or choose an empty folder")


def write_marker(root: Path, layout: str, params: dict) -> None:
    """Marks `root` as a set `losh synth` wrote, listing every file in it (deterministic: no time stamp)."""
    files, _ = files_below(root)
    atomic_write_json(root / SYNTH_MARKER, {"schema": SYNTH_SCHEMA, "version": SYNTH_VERSION, "layout": layout,
                                            "params": params, "files": sorted(files - {SYNTH_MARKER})})


@contextmanager
def synthetic_set(out: str | Path, layout: str, params: dict, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty staging folder beside `out` to write the set into; when the block ends without error the set
    is marked and becomes `out` (see the module docstring). On an error `out` is left as it was."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        out = out.resolve()                       # "." or "x/..": its staging folder is named after the real one
    refuse_unless_replaceable(out, overwrite)
    remove_stale_staging(out)                     # a killed writer's half-written set
    stage = staging_path(out)
    if stage.exists():
        shutil.rmtree(stage)                      # this process's own, from an earlier call that failed
    stage.mkdir(parents=True)
    try:
        yield stage
        write_marker(stage, layout, params)
        refuse_unless_replaceable(out, overwrite)  # again: someone may have written into OUT meanwhile
        if out.is_dir() and not folder_names(out):
            fill_empty_folder(stage, out, first=SYNTH_MARKER)   # marked first: a run killed meanwhile is ours
        else:
            publish_folder(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
