"""Reading PyTorch files (checkpoints, pretrained weights) without running code hidden in them.

`torch.load` unpickles: a file can name any Python callable and have it called while loading. Every file is read
with `weights_only=True`, which admits tensors and plain values (dicts, lists, tuples, strings, numbers, None,
OrderedDict, ...) and refuses anything else; a caller may admit a few more classes by name, exactly those a known
format holds (`allowed`). A refused file is named with the classes it holds. The one way to load a file anyway is
the user's word for it: `trusting_files()` (the CLI's `--trust-checkpoint`).

    state = safe_torch_load(path, what="checkpoint")
    with trusting_files(True):          # the user vouches for the files loaded in this block
        state = safe_torch_load(path)
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

_TRUSTED: ContextVar[bool] = ContextVar("losh_trusted_files", default=False)
TRUST_OPTION = "--trust-checkpoint"


class UnsafeFile(ValueError):
    """A file holds objects whose loading could run code; the message names them and the way out."""


@contextmanager
def trusting_files(trust: bool = True) -> Iterator[None]:
    """Files loaded inside the block are trusted (unpickled whole) when `trust` is True."""
    token = _TRUSTED.set(bool(trust))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def safe_torch_load(path: str | os.PathLike, *, allowed: Sequence[Any] = (), what: str = "file",
                    map_location: Any = "cpu") -> Any:
    """`torch.load` with `weights_only=True`, admitting the classes in `allowed` too; unpickled whole only inside
    `trusting_files()`. Raises `UnsafeFile` naming what the file holds beyond that; other read errors propagate."""
    if _TRUSTED.get():
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        names = _unsafe_globals(path, allowed)
        held = f"it holds {', '.join(names)}" if names else f"it cannot be read as data only ({_first_line(error)})"
        raise UnsafeFile(f"{path}: refused: {held}, and loading a {what} that holds more than tensors and plain "
                         f"values could run code. If you trust this file (you made it, or its publisher), pass "
                         f"{TRUST_OPTION}") from None


def _unsafe_globals(path: str | os.PathLike, allowed: Sequence[Any]) -> list[str]:
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        names = finder(path)
    except Exception:  # noqa: BLE001 - the names only make the message better
        return []
    admitted = {f"{getattr(a, '__module__', '')}.{getattr(a, '__qualname__', getattr(a, '__name__', ''))}"
                for a in allowed}
    return [name for name in names if name not in admitted]


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0][:300]
