"""Random streams of a simulated federation: one ``Stream`` id per purpose, in one place.

Every engine draws its simulation randomness from ``numpy`` generators seeded by
``[run seed, stream, ids...]`` (a ``SeedSequence``), so a purpose has its own stream:
changing the cohort size never shifts the noise a client draws, and sampling clients in
another order never changes what one client draws. The numbers are part of every
recorded result (a run's seed reproduces it): never renumber a stream, only add new ones.

Deployed nodes draw their DP noise from OS entropy instead
(:func:`fedguard.privacy.rng.os_entropy_generator`): a simulation seed is public.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Stream", "stream_rng", "stream_seed", "stream_seeds_u64"]


class Stream(IntEnum):
    """What a stream's numbers are used for (its value is the second seed word)."""

    COHORT = 1  # the clients sampled in a round
    CLIENT = 2  # one client's torch generator in one round: batches and DP-SGD noise
    PARTITION = 3  # how the data set is split among virtual clients
    QUANTIZE = 4  # the stochastic rounding of secure aggregation
    CLIENT_NOISE = 5  # each client's share of client-level DP noise
    DP_SCALING = 6  # a virtual client's DP estimate of its columns' centre and scale


def stream_seed(*, seed: int, stream: Stream, ids: tuple[int, ...] = ()) -> np.random.SeedSequence:
    """The ``SeedSequence`` of ``stream`` for run ``seed`` and ``ids`` (round, client...)."""
    return np.random.SeedSequence([seed, int(stream), *ids])


def stream_rng(*, seed: int, stream: Stream, ids: tuple[int, ...] = ()) -> np.random.Generator:
    """A numpy generator on ``stream`` (the same numbers as ``stream_seed``'s sequence)."""
    return np.random.default_rng(stream_seed(seed=seed, stream=stream, ids=ids))


# numpy's SeedSequence (numpy/random/bit_generator.pyx, a stable, documented algorithm):
# its hash constants, and a pool of four 32-bit words.
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_POOL = 4
_M32 = 0xFFFFFFFF


def stream_seeds_u64(
    *, seed: int, stream: Stream, ids: tuple[int, ...], last: np.ndarray
) -> np.ndarray:
    """``stream_seed(seed=seed, stream=stream, ids=(*ids, x)).generate_state(1, uint64)[0]``
    for every ``x`` in ``last``, in one vectorised pass (a cohort's client seeds).

    Bit for bit numpy's ``SeedSequence`` (a test compares them on random inputs): building
    one per client cost ~7 us, the most expensive thing a batched client did per round.
    """
    last = np.asarray(last)
    if last.ndim != 1 or last.dtype.kind not in "iu" or (last.size and int(last.min()) < 0):
        raise ValueError(f"last: expected non-negative integers, got {last!r}")
    if last.size and int(last.max()) > _M32:  # more than one entropy word: numpy's own path
        return np.array(
            [
                stream_seed(seed=seed, stream=stream, ids=(*ids, int(x))).generate_state(
                    1, dtype=np.uint64
                )[0]
                for x in last
            ],
            dtype=np.uint64,
        )
    head = [seed, int(stream), *ids]
    np.random.SeedSequence(head)  # refuses what numpy refuses (negative or non-integer)
    words: list[np.ndarray] = [np.full(last.shape, w, dtype=np.uint32) for w in _words(head)]
    words.append(last.astype(np.uint32))
    pool = _mix_entropy(words)
    return _generate_u64(pool)


def _words(entropy: list[int]) -> list[int]:
    """numpy's ``_coerce_to_uint32_array``: each integer as little-endian 32-bit words."""
    out: list[int] = []
    for n in entropy:
        n = int(n)
        if n == 0:
            out.append(0)
        while n > 0:
            out.append(n & _M32)
            n >>= 32
    return out


def _hashmix(value: np.ndarray, const: list[int]) -> np.ndarray:
    value = value ^ np.uint32(const[0])
    const[0] = (const[0] * _MULT_A) & _M32
    value = value * np.uint32(const[0])
    return value ^ (value >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.subtract(
        np.multiply(x, np.uint32(_MIX_L), dtype=np.uint32),
        np.multiply(y, np.uint32(_MIX_R), dtype=np.uint32),
        dtype=np.uint32,
    )
    return result ^ (result >> np.uint32(16))


def _mix_entropy(entropy: list[np.ndarray]) -> list[np.ndarray]:
    const = [_INIT_A]
    zero = np.zeros_like(entropy[0])
    pool = [_hashmix(entropy[i] if i < len(entropy) else zero, const) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], _hashmix(pool[src], const))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], _hashmix(entropy[src], const))
    return pool


def _generate_u64(pool: list[np.ndarray]) -> np.ndarray:
    const = _INIT_B
    halves = []
    for i in range(2):  # one uint64: two uint32 words, little-endian
        value = pool[i % _POOL] ^ np.uint32(const)
        const = (const * _MULT_B) & _M32
        value = value * np.uint32(const)
        halves.append(value ^ (value >> np.uint32(16)))
    return halves[0].astype(np.uint64) | (halves[1].astype(np.uint64) << np.uint64(32))
