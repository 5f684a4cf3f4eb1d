"""The JSON the tools write and read, through msgspec: compact, UTF-8, one object per line.

    dumps(obj) / dumpb(obj)      compact JSON (str / bytes); indent=N pretty-prints, sort_keys=True
                                 sorts object keys (as json.dumps does with the same arguments)
    loads(text or bytes)         any JSON value; a malformed document raises msgspec.DecodeError,
                                 a ValueError as json.loads raises

Output is read by any JSON reader. Unlike the standard library's json.dumps it is compact (no space
after ``,`` and ``:``), writes non-ASCII characters as UTF-8 rather than ``\\u`` escapes, and a
NaN or infinite float becomes ``null`` (valid JSON) rather than ``NaN``.
"""
from __future__ import annotations

from typing import Any, Final

import msgspec

_ENCODE: Final = msgspec.json.Encoder().encode
_ENCODE_SORTED: Final = msgspec.json.Encoder(order="sorted").encode
_DECODE: Final = msgspec.json.Decoder().decode


def dumpb(obj: Any, *, indent: int = 0, sort_keys: bool = False) -> bytes:
    data = (_ENCODE_SORTED if sort_keys else _ENCODE)(obj)
    return msgspec.json.format(data, indent=indent) if indent else data


def dumps(obj: Any, *, indent: int = 0, sort_keys: bool = False) -> str:
    return dumpb(obj, indent=indent, sort_keys=sort_keys).decode()


def loads(data: str | bytes) -> Any:
    return _DECODE(data)


def load_path(path: str) -> Any:
    """The JSON document in a file."""
    with open(path, "rb") as f:
        return _DECODE(f.read())
