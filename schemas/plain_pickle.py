"""Reading pickles of plain data (lists, dicts, strings, numbers) without running code hidden in them.

A pickle can name any Python callable and have it called while loading (`os.system`, `eval`, ...). The refer
toolkit ships its expressions as pickles (`refs(unc).p`, written by Python 2 with protocol 2): lists of dicts of
strings and numbers, which pickle stores with opcodes of their own and no named callable at all. So the unpickler
here admits no global whatsoever: a file that asks for one is refused, naming what it asked for, before anything
is called. Python 2 byte strings are read as bytes and decoded as UTF-8 (Latin-1 where they are not UTF-8), so
the result holds `str` throughout, keys included.

    refs = load_plain_pickle(root / "refcoco" / "refs(unc).p")
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

PLAIN = "these files hold only lists, dicts, strings and numbers"


class RefusedPickle(pickle.UnpicklingError):
    """A pickle asks for a Python object by name (code that loading would run): refused, the name given."""


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler whose every request for a named object (a class, a function) is refused."""

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        module = module.decode("latin-1") if isinstance(module, bytes) else module
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        raise RefusedPickle(f"{self.where} asks for {module}.{name}: refused ({PLAIN})")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle(f"{self.where} asks for a persistent object {pid!r}: refused ({PLAIN})")


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def as_text(value: Any) -> Any:
    """`value` with every byte string (a Python 2 `str`) decoded to `str`, inside lists, tuples and dict keys too."""
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, list):
        return [as_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(as_text(v) for v in value)
    if isinstance(value, dict):
        return {as_text(k): as_text(v) for k, v in value.items()}
    return value


def load_plain_pickle(path: str | os.PathLike, where: str | None = None) -> Any:
    """The plain data a pickle holds, its byte strings as `str`. Raises `RefusedPickle` naming the file and the
    object it asks for when it asks for any; `pickle.UnpicklingError`, `EOFError` and the like when it is damaged."""
    where = where or os.fspath(path)
    with open(path, "rb") as f:
        return as_text(_PlainUnpickler(f, where).load())
