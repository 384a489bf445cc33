"""Checks of the Flower records fedguard receives: which records, and which arrays.

Everything here reads bytes another party chose. A record dict must hold exactly the
records expected; an array must be a plain numeric ``.npy`` whose header (read before any
data is) matches its length, so neither an object array nor a header promising terabytes
is ever loaded; weights must be finite, of the expected dtypes and shapes and, for an
update, within a norm bound. Each failure is a ``ValueError`` of one line naming what was
expected and what came.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

__all__ = ["check_finite", "check_records", "check_update", "decode_array", "decode_arrays"]

_KIND: dict[type, str] = {ArrayRecord: "arrays", MetricRecord: "metrics", ConfigRecord: "config"}


def check_records(
    content: RecordDict,
    *,
    what: str,
    required: Mapping[str, type],
    optional: Mapping[str, type],
) -> None:
    """``content`` holds every ``required`` record and no other but ``optional`` ones."""
    allowed = {**required, **optional}
    found = {name: type(record) for name, record in content.items()}
    wrong = [n for n, kind in found.items() if allowed.get(n) is not kind]
    if wrong or not required.keys() <= found.keys():
        want = ", ".join(f"{n} ({_KIND[k]})" for n, k in required.items())
        if optional:
            want += "; optionally " + ", ".join(f"{n} ({_KIND[k]})" for n, k in optional.items())
        got = ", ".join(f"{n} ({_KIND.get(k, k.__name__)})" for n, k in sorted(found.items()))
        raise ValueError(f"{what}: expected records {want}; got {got or 'none'}")


def decode_arrays(record: ArrayRecord, *, what: str) -> list[np.ndarray]:
    """Every array of ``record``, in order, each through :func:`decode_array`."""
    return [decode_array(a, what=f"{what}[{i}]") for i, a in enumerate(record.values())]


# .npy format versions whose header numpy reads without loading the data.
_NPY_HEADERS: dict[
    tuple[int, int], Callable[[io.BytesIO], tuple[tuple[int, ...], bool, np.dtype]]
] = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def decode_array(array: Array, *, what: str) -> np.ndarray:
    """One array of a record: a numeric ``.npy`` whose header matches its size.

    The header is read first, so a header that promises more data than the message holds
    (numpy would allocate it before noticing) or an object array is refused unread.
    """
    if array.stype != "numpy.ndarray":
        raise ValueError(f"{what}: expected a numpy.ndarray, got serialisation {array.stype!r}")
    data = array.data
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = _NPY_HEADERS.get(version)
        if read_header is None:
            raise ValueError(f"format version {version}, not 1.0 or 2.0")
        shape, _fortran, dtype = read_header(buf)
    except Exception as exc:  # whatever numpy makes of bytes that are not .npy
        raise ValueError(f"{what}: expected .npy bytes, got undecodable ones ({exc})") from None
    if dtype.kind not in "biufc" or dtype.itemsize == 0:
        raise ValueError(f"{what}: expected a numeric dtype, got {dtype}")
    size = math.prod(shape) * dtype.itemsize
    if len(data) - buf.tell() != size:
        raise ValueError(
            f"{what}: expected {size} bytes of {dtype} {shape}, got {len(data) - buf.tell()}"
        )
    try:
        out = array.numpy()
    except Exception as exc:
        raise ValueError(f"{what}: undecodable ({type(exc).__name__}: {exc})") from None
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{what}: expected an array, got {type(out).__name__}")
    return out


def check_finite(w: np.ndarray, *, what: str) -> None:
    """No NaN or infinity in ``w``."""
    bad = int(w.size - np.count_nonzero(np.isfinite(w)))
    if bad:
        raise ValueError(f"{what}: expected finite values, got {bad} NaN/Inf of {w.size}")


def check_update(
    weights: Sequence[np.ndarray], *, expect: Sequence[np.ndarray], max_update_norm: float | None
) -> None:
    """``weights`` match ``expect`` (the global weights sent) array by array in dtype and
    shape, are finite and, with ``max_update_norm``, differ from it by at most that L2 norm
    (computed in float64 over all arrays)."""
    if len(weights) != len(expect):
        raise ValueError(f"reply weights: expected {len(expect)} arrays, got {len(weights)}")
    for i, (w, g) in enumerate(zip(weights, expect, strict=True)):
        if w.dtype != g.dtype or w.shape != g.shape:
            raise ValueError(
                f"reply weights[{i}]: expected {g.dtype} {g.shape}, got {w.dtype} {w.shape}"
            )
        check_finite(w, what=f"reply weights[{i}]")
    if max_update_norm is None:
        return
    squares = sum(
        float(np.sum(np.square(np.asarray(w, np.float64) - np.asarray(g, np.float64))))
        for w, g in zip(weights, expect, strict=True)
    )
    norm = math.sqrt(squares)
    if not norm <= max_update_norm:
        raise ValueError(
            f"reply update (weights - global): expected an L2 norm <= {max_update_norm:g} "
            f"(max-update-norm), got {norm:.4g}"
        )
