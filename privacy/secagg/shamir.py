"""Shamir t-of-n secret sharing (Shamir 1979) of 32-byte secrets over GF(2^521 - 1).

A secret is the constant term of a random polynomial of degree ``t - 1``; holder ``x``
(1, 2, ...) gets the point ``(x, f(x))``. Any ``t`` points give back the secret by Lagrange
interpolation at 0; fewer reveal nothing about it (every secret fits them equally well).
"""

from __future__ import annotations

import functools
import secrets as _secrets
from collections.abc import Mapping, Sequence

from ._hazmat import SecAggError

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

PRIME = 2**521 - 1
"""The Mersenne prime M521: larger than any 32-byte secret, so one field element holds
one secret and no secret is reduced modulo it."""
SHARE_BYTES = 66
"""A field element below 2**521 written big-endian."""
_SECRET_BYTES = 32


def split(secret: bytes, *, threshold: int, holders: Sequence[int]) -> dict[int, bytes]:
    """Shares of ``secret`` for each holder x in ``holders``; ``threshold`` recover it."""
    coefficients = [_secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return _split_from_parts(
        secret, threshold=threshold, holders=holders, coefficients=coefficients
    )


def _split_from_parts(
    secret: bytes, *, threshold: int, holders: Sequence[int], coefficients: Sequence[int]
) -> dict[int, bytes]:
    if len(secret) != _SECRET_BYTES:
        raise SecAggError("secret must be 32 bytes")
    if not 1 <= threshold <= len(holders) or len(coefficients) != threshold - 1:
        raise SecAggError("threshold must be between 1 and the number of holders")
    if len(set(holders)) != len(holders) or not all(0 < x < PRIME for x in holders):
        raise SecAggError("holders must be distinct field elements > 0")
    poly = [int.from_bytes(secret, "big"), *(c % PRIME for c in coefficients)]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(poly):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Each point's weight in f(0) = sum(y_i * w_i): prod x_j / (x_j - x_i), j != i.

    They depend on the holders only, and a server reconstructs every survivor's secret
    from much the same holders: computed once per holder set, not once per secret.
    """
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(weights)


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares ``{x: f(x)}`` (uses the first t)."""
    if len(shares) < threshold or threshold < 1:
        raise SecAggError("not enough shares")
    points = sorted(shares.items())[:threshold]
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise SecAggError("bad share coordinates")
    secret = 0
    for (_, yb), weight in zip(points, _lagrange_at_zero(tuple(xs)), strict=True):
        if len(yb) != SHARE_BYTES:
            raise SecAggError("bad share length")
        yi = int.from_bytes(yb, "big")
        if yi >= PRIME:
            raise SecAggError("share outside the field")
        secret = (secret + yi * weight) % PRIME
    if secret >= 2 ** (8 * _SECRET_BYTES):
        # Shares that do not come from one polynomial of degree < t interpolate to noise.
        raise SecAggError("shares are inconsistent")
    return secret.to_bytes(_SECRET_BYTES, "big")
