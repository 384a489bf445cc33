"""Red team (#18): the summed batched round neither drops nor double-counts an update,
whether it folds after every update (every fold boundary) or once, with a refused
client in the cohort; a refused client is never in a sum and its accountant is unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedguard.config import SimulationConfig
from fedguard.fl.data import federated_data, initial_model
from fedguard.fl.local import LocalTrainer
from fedguard.fl.loop import ClientUpdate, PartialSum, Refusal, WeightedSum
from fedguard.privacy import GaussianEvent
from fedguard.simulations import cohort_trainers
from fedguard.simulations.cohort_trainers import Vectorised, VirtualClients, cohort_trainer
from fedguard.task import get_weights

COHORT = [0, 1, 2, 3]
EXHAUSTED = 1  # this client has spent its budget before the round


def _parts(tmp_path: Path):
    config = SimulationConfig(out=tmp_path / "out", dataset="digits", clients=4, model="mlp")
    data = federated_data(config)
    trainer = LocalTrainer(model=initial_model(config, data), dp=True)
    clients = VirtualClients(
        config=config, data=data, device=torch.device("cpu"), state_dir=tmp_path / "state"
    )
    assert clients.budget is not None
    store = clients.store(EXHAUSTED)
    spent = store.load(method=clients.budget.accountant)
    spent.compose(GaussianEvent(noise_multiplier=0.3, sample_rate=1.0, steps=500))
    store.save(spent)
    return config, trainer, clients


@pytest.mark.parametrize("fold_floats", [1, 1 << 24])
def test_summed_rounds_count_every_update_once_and_no_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fold_floats: int
) -> None:
    _, trainer, clients = _parts(tmp_path / "plain")
    start = get_weights(trainer.model)
    plain = Vectorised(trainer=trainer, clients=clients, budget=clients.budget)
    each = list(plain(1, COHORT, start))
    want = WeightedSum()
    for r in each:
        if isinstance(r, ClientUpdate):
            assert r.weights is not None
            want.add([w - g for w, g in zip(r.weights, start, strict=True)], weight=r.num_examples)

    monkeypatch.setattr(cohort_trainers, "_FOLD_FLOATS", fold_floats)
    config2, trainer2, clients2 = _parts(tmp_path / "summed")
    before = clients2.store(EXHAUSTED).load(method="rdp").events
    summed = cohort_trainer(config=config2, trainer=trainer2, clients=clients2)
    assert isinstance(summed, Vectorised) and summed.summed
    out = list(summed(1, COHORT, start))
    got = WeightedSum()
    for r in out:
        if isinstance(r, PartialSum):
            got.merge(r.total)
    refusals = [r.client_id for r in out if isinstance(r, Refusal)]
    updates = [r.client_id for r in out if isinstance(r, ClientUpdate)]
    assert refusals == [EXHAUSTED] == [r.client_id for r in each if isinstance(r, Refusal)]
    assert sorted(updates) == [c for c in COHORT if c != EXHAUSTED]
    assert all(r.weights is None for r in out if isinstance(r, ClientUpdate))
    assert got.count == want.count == len(COHORT) - 1
    assert got.total_weight == want.total_weight
    for a, b in zip(got.mean(), want.mean(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert clients2.store(EXHAUSTED).load(method="rdp").events == before  # nothing spent
