"""The mask-free sum equals the full protocol's, bit for bit, and fails exactly when it does.

Both run with the real quantiser and the same seeded generator; the full protocol with real
keys, shares, masks and signatures. Dropout patterns are drawn at random (seeded) across
cohort sizes, sparse (SecAgg+) and complete graphs, colluder assumptions and node floors,
so rounds that complete and rounds that abort at each check are both covered.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedguard.errors import SecAggError
from fedguard.privacy.secagg import secure_sum_in_process, secure_sum_without_masks
from fedguard.privacy.secagg.params import neighbours

RNG_SEED = 5


def outcome(fn, params, inputs, drop, **kw):
    try:
        result = fn(
            params=params,
            input_for=lambda slot: None if slot in drop else inputs[slot],
            rng=np.random.default_rng(RNG_SEED),
            **kw,
        )
    except SecAggError as exc:  # aborts and refusals alike
        return ("error", type(exc).__name__, str(exc))
    return ("sum", result.total.dtype, result.total.tobytes(), result.survivors, result.dropped)


CASES = [  # cohort, tolerance, max-colluding, node floor (min-holders), sparse (k, t)
    (3, 1 / 3, 0, 0, None),
    (5, 0.45, 1, 0, None),
    (10, 1 / 3, 0, 0, None),
    (12, 0.45, 2, 0, None),
    (10, 1 / 3, 0, 12, None),  # a floor no neighbourhood meets: every node refuses
    # SecAgg+ graphs (each node has a neighbourhood, not the cohort), as large cohorts get
    (20, 1 / 3, 0, 0, (6, 5)),
    (30, 1 / 3, 2, 0, (8, 6)),
    (30, 1 / 3, 0, 8, (8, 6)),  # a node floor above the threshold
]


@pytest.mark.parametrize(("cohort", "tolerance", "colluding", "floor", "sparse"), CASES)
def test_the_sum_and_every_failure_match_the_full_protocol(
    harness, cohort, tolerance, colluding, floor, sparse
):
    params = harness.params(cohort, tolerance=tolerance)
    if sparse is not None:
        params = dataclasses.replace(params, degree=sparse[0], threshold=sparse[1])
    inputs = harness.inputs(params, seed=cohort)
    rng = np.random.default_rng([cohort, colluding])
    kinds = set()
    for trial in range(8):
        count = int(rng.integers(0, cohort)) if trial else 0
        drop = {int(s) for s in rng.choice(np.arange(1, cohort + 1), size=count, replace=False)}
        kw = {"max_colluding": colluding, "min_holders": floor}
        full = outcome(secure_sum_in_process, params, inputs, drop, **kw)
        free = outcome(secure_sum_without_masks, params, inputs, drop, **kw)
        assert free == full, (sorted(drop), full[:3], free[:3])
        kinds.add(full[0] if full[0] == "sum" else full[1])
    if floor <= params.degree + 1:
        assert "sum" in kinds  # the no-dropout trial completes
    if cohort >= 10:
        assert kinds - {"sum"}  # and some dropout pattern fails


def test_a_dropped_node_whose_key_cannot_be_rebuilt_aborts_both_alike(harness):
    """The rarer abort: every survivor keeps enough holders, but a dropped node's masks
    cannot be removed (too few of its neighbours survived). Found by search on the graph."""
    params = harness.params(20, tolerance=1 / 3)
    params = dataclasses.replace(params, degree=6, threshold=5)
    nbrs = {s: set(neighbours(params, s)) for s in range(1, 21)}
    rng = np.random.default_rng(11)
    for _ in range(20_000):
        drop = {int(s) for s in rng.choice(np.arange(1, 21), size=5, replace=False)}
        alive = set(range(1, 21)) - drop
        survivors_ok = all(len(nbrs[s] & alive) + 1 >= 5 for s in alive)
        if survivors_ok and any(len(nbrs[d] & alive) < 5 for d in drop):
            break
    else:
        pytest.fail("no such dropout pattern found")
    inputs = harness.inputs(params, seed=20)
    full = outcome(secure_sum_in_process, params, inputs, drop)
    assert full[0] == "error" and "aborted at unmask" in full[2]
    assert outcome(secure_sum_without_masks, params, inputs, drop) == full
