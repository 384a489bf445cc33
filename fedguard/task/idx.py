"""The IDX format of (Fashion-)MNIST: a big-endian header, then the array's bytes."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedguard.errors import DataError

__all__ = ["read_idx"]

# IDX type byte -> big-endian element type (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into an array of its native type.

    Raises
    ------
    DataError
        The file is missing/unreadable, its header is not IDX, or its data is truncated
        or followed by extra bytes. The message names the file.
    """
    raw = _read_bytes(path)
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = header + math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        problem = "truncated" if len(raw) < need else "has trailing bytes"
        raise DataError(
            f"{path}: IDX data {problem}: shape {shape} needs {need} bytes, file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _read_bytes(path: Path) -> bytes:
    return _with_file(path, lambda fh: fh.read(), errors=())


def _with_file(path: Path, read: Any, *, errors: tuple[type[BaseException], ...]) -> Any:
    """Open ``path`` ourselves so OS errors carry a clean reason; wrap parser errors."""
    try:
        with path.open("rb") as fh:
            return read(fh)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except errors as exc:
        reason = " ".join(str(exc).split())  # parsers put newlines in their messages
        raise DataError(f"{path}: cannot parse ({reason})") from None
