"""Round parameters and the neighbour graph: degree, threshold, ring, validation."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedguard.errors import ConfigError
from fedguard.privacy.secagg import SecAggParams, choose_degree, make_params, neighbours
from fedguard.privacy.secagg.params import FAILURE_PROBABILITY


def params(**overrides) -> SecAggParams:
    base = {
        "run": "fed",
        "server_round": 3,
        "cohort": 60,
        "degree": 8,
        "threshold": 5,
        "clip_range": 1.0,
        "bits": 16,
        "weight_cap": 100,
        "ring_bits": 32,
        "graph_seed": 11,
    }
    return SecAggParams(**(base | overrides))


def made(cohort: int, tolerance: float = 1 / 3, **kw) -> SecAggParams:
    args = {
        "run": "fed",
        "server_round": 1,
        "cohort": cohort,
        "clip_range": 1.0,
        "bits": 16,
        "weight_cap": 100,
        "dropout_tolerance": tolerance,
        "graph_seed": 5,
    }
    return make_params(**(args | kw))


def exact_tail(holders: int, p: float, allowed: int) -> Fraction:
    """P[Binomial(holders, p) > allowed], exactly, in rationals."""
    q = Fraction(p)
    return sum(
        (
            math.comb(holders, x) * q**x * (1 - q) ** (holders - x)
            for x in range(allowed + 1, holders + 1)
        ),
        Fraction(0),
    )


def test_small_cohorts_get_the_complete_graph_and_a_deterministic_tolerance():
    # Cohort 60 at tolerance 1/3: k = 59 (complete), t = 60 - 20 = 40.
    p = made(60)
    assert (p.degree, p.threshold, p.ring_bits) == (59, 40, 32)
    for cohort, tolerance in [(3, 1 / 3), (5, 1 / 3), (10, 1 / 3), (30, 1 / 3), (10, 0.45)]:
        p = made(cohort, tolerance)
        assert p.degree == cohort - 1
        assert p.threshold == max(cohort // 2 + 1, cohort - math.floor(tolerance * cohort))
        assert neighbours(p, 1) == list(range(2, cohort + 1))


@pytest.mark.parametrize(("cohort", "tolerance"), [(1000, 1 / 3), (2000, 1 / 3), (1200, 0.375)])
def test_large_cohorts_get_a_sparse_graph_meeting_the_failure_bound(cohort, tolerance):
    p = made(cohort, tolerance)
    k, holders = p.degree, p.degree + 1
    assert k < cohort - 1 and k % 2 == 0
    assert p.threshold == holders // 2 + 1
    assert p.ring_bits == 64  # 1000 x 100 x (2**16 - 1) >= 2**32
    # Exact binomial tail (rationals), independent of the float code in params.py.
    allowed = holders - p.threshold
    assert cohort * exact_tail(holders, tolerance, allowed) <= FAILURE_PROBABILITY
    smaller = k - 1  # holders of degree k - 2
    assert cohort * exact_tail(smaller, tolerance, smaller - (smaller // 2 + 1)) > (
        FAILURE_PROBABILITY
    )
    assert choose_degree(cohort=cohort, dropout_tolerance=tolerance) == k


def test_choose_degree_has_no_float_overflow_for_big_cohorts():
    # math.comb(h, h // 2) overflows a float beyond ~1030 holders.
    assert choose_degree(cohort=20_000, dropout_tolerance=1 / 3) < 1000


@settings(max_examples=40, deadline=None)
@given(
    cohort=st.integers(4, 300),
    half=st.integers(1, 40),
    seed=st.integers(0, 2**64 - 1),
    server_round=st.integers(0, 10**6),
)
def test_harary_graph_is_symmetric_regular_and_deterministic(cohort, half, seed, server_round):
    degree = min(2 * half, cohort - 1)
    p = params(
        cohort=cohort,
        degree=degree,
        threshold=degree // 2 + 1 + (degree == cohort - 1),
        graph_seed=seed,
        server_round=server_round,
    )
    graph = {s: neighbours(p, s) for s in range(1, cohort + 1)}
    for slot, adjacent in graph.items():
        assert len(adjacent) == degree == len(set(adjacent))
        assert slot not in adjacent and adjacent == sorted(adjacent)
        assert all(1 <= a <= cohort for a in adjacent)
        for a in adjacent:
            assert slot in graph[a]
    assert graph == {s: neighbours(dataclasses.replace(p), s) for s in range(1, cohort + 1)}


def test_graph_depends_on_seed_and_round():
    p = params()
    graph = [neighbours(p, s) for s in range(1, 61)]
    assert graph != [neighbours(dataclasses.replace(p, graph_seed=12), s) for s in range(1, 61)]
    assert graph != [neighbours(dataclasses.replace(p, server_round=4), s) for s in range(1, 61)]
    with pytest.raises(ValueError, match="slot"):
        neighbours(p, 0)
    with pytest.raises(ValueError, match="slot"):
        neighbours(p, 61)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"cohort": 1, "degree": 1, "threshold": 1}, "secagg cohort"),
        ({"degree": 60}, "secagg degree"),
        ({"degree": 7}, "secagg degree"),  # odd and below cohort - 1
        ({"threshold": 4}, "secagg threshold"),  # half of 9 holders or less
        ({"threshold": 10}, "secagg threshold"),
        ({"bits": 31}, "secagg bits"),
        ({"bits": True}, "secagg bits"),
        ({"weight_cap": 0}, "secagg weight-cap"),
        ({"ring_bits": 16}, "secagg ring-bits"),
        ({"clip_range": float("nan")}, "secagg clip-range"),
        ({"clip_range": float("inf")}, "secagg clip-range"),
        ({"clip_range": 0.0}, "secagg clip-range"),
        ({"bits": 30, "weight_cap": 10**6}, "secagg ring-bits"),  # the sum would overflow
    ],
)
def test_params_validation_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        params(**overrides)


def test_make_params_checks_tolerance_and_picks_the_ring():
    for bad in (0.2, 0.5, float("nan")):
        with pytest.raises(ConfigError, match="secagg dropout-tolerance"):
            made(10, bad)
    assert made(10, bits=16, weight_cap=100).ring_bits == 32
    assert made(10, bits=24, weight_cap=1000).ring_bits == 64
    assert made(10).context() == made(10).context() and len(made(10).context()) == 32


def test_the_session_context_binds_every_parameter_and_the_names():
    """A server that gives two nodes different parameters in one round gives them different
    contexts: their keys, seals and signatures then do not agree (see test_consistency)."""
    base = dataclasses.replace(made(10), names=tuple(f"n{i}" for i in range(10)))
    changes = {
        "run": "other",
        "server_round": 2,
        "cohort": 11,
        "degree": 4,
        "threshold": 6,
        "clip_range": 2.0,
        "bits": 15,
        "weight_cap": 99,
        "ring_bits": 64,
        "graph_seed": 6,
        "names": ("n1", "n0", *(f"n{i}" for i in range(2, 10))),
        "max_colluding": 1,
    }
    seen = {base.context()}
    for field, value in changes.items():
        kw = {field: value}
        if field == "cohort":
            kw |= {"names": (*base.names, "n10"), "degree": 10}
        if field == "degree":
            kw["threshold"] = 3
        changed = dataclasses.replace(base, **kw)
        assert changed.context() not in seen, field
        seen.add(changed.context())
    assert len(seen) == len(changes) + 1


@pytest.mark.parametrize(
    "names",
    [("a", "b"), ("a",) * 10, ("a", "", *"cdefghij"), ("a\x00", *"bcdefghij")],
    ids=["too-few", "duplicate", "empty", "nul"],
)
def test_names_must_be_one_distinct_name_per_slot(names):
    with pytest.raises(ConfigError, match="secagg names: expected 10 distinct non-empty"):
        dataclasses.replace(made(10), names=names)
