"""RNG stream ids have one home (fedguard.fl.seeds) and keep their historical numbers.

A run's seed reproduces its results only while every purpose keeps its stream number:
these are pinned, and no product module may seed a generator with its own stream list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fedguard.fl.loop import client_generator, client_generators, sample_cohort
from fedguard.fl.seeds import Stream, stream_rng, stream_seed, stream_seeds_u64

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("fedguard", "privacy", "client", "server", "simulations")
# The secagg neighbour graph is seeded by the session's public graph seed, not a run seed.
ALLOWED = {Path("fedguard/fl/seeds.py"), Path("privacy/secagg/params.py")}


def test_stream_numbers_are_the_historical_ones() -> None:
    assert {s.name: s.value for s in Stream} == {
        "COHORT": 1,
        "CLIENT": 2,
        "PARTITION": 3,
        "QUANTIZE": 4,
        "CLIENT_NOISE": 5,
        "DP_SCALING": 6,
    }


def test_streams_draw_what_the_literal_seed_lists_drew() -> None:
    ours = stream_rng(seed=7, stream=Stream.QUANTIZE, ids=(3,)).random(4)
    assert np.array_equal(ours, np.random.default_rng([7, 4, 3]).random(4))
    cohort = sample_cohort(seed=7, server_round=2, num_clients=10, cohort_size=3)
    old = np.random.default_rng([7, 1, 2]).choice(10, size=3, replace=False)
    assert cohort == sorted(int(i) for i in old)
    g = client_generator(seed=7, server_round=2, client_id=5)
    seed64 = int(np.random.SeedSequence([7, 2, 2, 5]).generate_state(1, dtype=np.uint64)[0])
    assert g.initial_seed() == seed64
    assert stream_seed(seed=7, stream=Stream.CLIENT, ids=(2, 5)).entropy == [7, 2, 2, 5]


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 + 5, 2**32 - 1, 2**32, 2**40 + 9, 2**70 + 1])
@pytest.mark.parametrize("ids", [(), (0,), (3,), (2**33 + 1,), (4, 9)])
def test_the_vectorised_hash_is_numpys_seed_sequence_bit_for_bit(seed: int, ids: tuple) -> None:
    last = np.concatenate(
        [[0, 1, 2**32 - 1, 2**32, 2**45], np.random.default_rng(seed % 97).integers(0, 2**31, 40)]
    )
    want = [
        stream_seed(seed=seed, stream=Stream.CLIENT, ids=(*ids, int(x))).generate_state(
            1, dtype=np.uint64
        )[0]
        for x in last
    ]
    got = stream_seeds_u64(seed=seed, stream=Stream.CLIENT, ids=ids, last=last)
    assert got.dtype == np.uint64 and got.tolist() == [int(w) for w in want]
    small = last[last <= 2**32 - 1]  # the vectorised path (one entropy word per id)
    assert stream_seeds_u64(seed=seed, stream=Stream.CLIENT, ids=ids, last=small).tolist() == [
        int(w) for w, x in zip(want, last, strict=True) if x <= 2**32 - 1
    ]


def test_a_cohorts_generators_are_each_clients_own() -> None:
    for ids in ([0, 5, 699, 12], [*range(0, 700, 9), 2**32 - 1]):  # numpy's / vectorised
        many = client_generators(seed=3, server_round=4, client_ids=ids)
        assert [g.initial_seed() for g in many] == [
            client_generator(seed=3, server_round=4, client_id=c).initial_seed() for c in ids
        ]
    with pytest.raises(ValueError, match="non-negative"):
        stream_seeds_u64(seed=3, stream=Stream.CLIENT, ids=(4,), last=np.array([-1]))


def _seeded_with_a_list(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List):
            name = ast.unparse(node.func)
            if name.endswith(("default_rng", "SeedSequence")):
                lines.append(node.lineno)
    return lines


def test_no_module_seeds_a_generator_with_its_own_stream_list() -> None:
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel in ALLOWED or "proto" in rel.parts:
                continue
            for line in _seeded_with_a_list(ast.parse(path.read_text(encoding="utf-8"))):
                found.append(f"{rel}:{line}")
    assert found == []
