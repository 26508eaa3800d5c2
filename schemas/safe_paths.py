"""Data-set ids become file names: an id must be one plain path component, so that no id reads or writes outside
its folder (`../../x`, `/etc/x`, `a/b`).

    path = join_ids(out / "shards", f"{video_id}.h5")      # raises UnsafeName for "../x.h5"
    reason = unsafe_reason(video_id)                        # None, or why it cannot name a file
"""
from __future__ import annotations

import os
from pathlib import Path


class UnsafeName(ValueError):
    """An id that is not one plain file or folder name."""


def unsafe_reason(name: object) -> str | None:
    """Why `name` cannot be used as one file or folder name inside a folder, or None when it can."""
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name:
        return "empty"
    if name in (".", ".."):
        return "a reference to a folder, not a name"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if "\x00" in name:
        return "it holds a NUL character"
    if os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    return None


def join_ids(folder: str | os.PathLike, *names: str) -> Path:
    """`folder / names[0] / names[1] ...`, each name checked to be one plain component."""
    for name in names:
        reason = unsafe_reason(name)
        if reason is not None:
            raise UnsafeName(f"{name!r} cannot name a file inside {folder}: {reason}")
    return Path(folder).joinpath(*names)
