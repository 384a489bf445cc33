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

__all__ = ["Stream", "stream_rng", "stream_seed"]


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
