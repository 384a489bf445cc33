"""RNG stream ids have one home (fedguard.fl.seeds) and keep their historical numbers.

A run's seed reproduces its results only while every purpose keeps its stream number:
these are pinned, and no product module may seed a generator with its own stream list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from fedguard.fl.loop import client_generator, sample_cohort
from fedguard.fl.seeds import Stream, stream_rng, stream_seed

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
