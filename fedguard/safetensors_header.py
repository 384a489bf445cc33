"""A safetensors file's header, read without loading its tensors (util layer).

fedguard stores weights as safetensors (never pickle): the server's checkpoint and a
node's stored reply. Both first read the header's ``__metadata__`` (format, round, request
key) to decide whether the file is theirs before loading any tensor. The header is an
8-byte little-endian length, then that many bytes of JSON; a damaged or hostile file may
give a length past its end, or JSON nested deep enough to raise ``RecursionError``.
"""

from __future__ import annotations

import json
import struct

__all__ = ["safetensors_metadata"]

_LENGTH = struct.Struct("<Q")


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of the safetensors file ``data`` (``{}`` if it has none).

    Raises
    ------
    ValueError
        One line saying why ``data`` has no readable header: too short, a length past the
        end of the file, JSON that does not parse (or nests too deep), or a header or
        ``__metadata__`` that is not an object of strings (the format allows only those).
    """
    if len(data) < _LENGTH.size:
        raise ValueError(f"{len(data)} bytes, no safetensors header")
    (size,) = _LENGTH.unpack_from(data)
    if size > len(data) - _LENGTH.size:
        raise ValueError(f"header length {size} is past the end of the {len(data)}-byte file")
    try:
        header = json.loads(data[_LENGTH.size : _LENGTH.size + size])
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ValueError(f"header is not JSON: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ is not a JSON object of strings")
    return meta
