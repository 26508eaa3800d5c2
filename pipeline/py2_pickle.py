"""Protocol-2 pickles of plain data as Python 2 writes them, so that synthetic refer-toolkit files (`refs(unc).p`)
are read the way the real ones are.

Python 3 writes `str` as unicode; Python 2's `pickle.dump(refs, f, 2)` writes its `str` as byte strings
(SHORT_BINSTRING / BINSTRING opcodes), which Python 3 reads back as `bytes` (or decodes with an encoding), and its
`long` with LONG1. This writer emits those opcodes for str, int, float, bool, None, list, tuple and dict (strings
UTF-8 encoded), and nothing that names a Python object.
"""
from __future__ import annotations

import pickle
import struct
from typing import Any


def py2_pickle(obj: Any) -> bytes:
    """`obj` (plain data) as the bytes Python 2's `pickle.dumps(obj, 2)` would give, its strings as byte strings."""
    out = bytearray(pickle.PROTO + b"\x02")
    _write(obj, out)
    out += pickle.STOP
    return bytes(out)


def _write(obj: Any, out: bytearray) -> None:
    if obj is None:
        out += pickle.NONE
    elif isinstance(obj, bool):
        out += pickle.NEWTRUE if obj else pickle.NEWFALSE
    elif isinstance(obj, int):
        _write_int(obj, out)
    elif isinstance(obj, float):
        out += pickle.BINFLOAT + struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out += (pickle.SHORT_BINSTRING + bytes([len(data)]) if len(data) < 256
                else pickle.BINSTRING + struct.pack("<i", len(data)))
        out += data
    elif isinstance(obj, (list, tuple)):
        out += pickle.EMPTY_LIST if isinstance(obj, list) else pickle.MARK
        if isinstance(obj, list) and obj:
            out += pickle.MARK
        for item in obj:
            _write(item, out)
        out += (pickle.APPENDS if obj else b"") if isinstance(obj, list) else pickle.TUPLE
    elif isinstance(obj, dict):
        out += pickle.EMPTY_DICT
        if obj:
            out += pickle.MARK
            for key, value in obj.items():
                _write(key, out)
                _write(value, out)
            out += pickle.SETITEMS
    else:
        raise TypeError(f"not plain data: {type(obj).__name__}")


def _write_int(value: int, out: bytearray) -> None:
    if 0 <= value < 256:
        out += pickle.BININT1 + bytes([value])
    elif 0 <= value < 65536:
        out += pickle.BININT2 + struct.pack("<H", value)
    elif -(2 ** 31) <= value < 2 ** 31:
        out += pickle.BININT + struct.pack("<i", value)
    else:   # a Python 2 long
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        out += pickle.LONG1 + bytes([len(data)]) + data
