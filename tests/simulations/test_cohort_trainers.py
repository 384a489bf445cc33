"""The in-process engine's cohort trainers, each on its own (#20.4): the mode chosen, one
client's step, and a secure round that holds one update at a time."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedguard.config import SimulationConfig
from fedguard.fl.data import federated_data, initial_model
from fedguard.fl.local import LocalTrainer
from fedguard.fl.loop import ClientUpdate, PartialSum, Refusal, SecureMean, WeightedSum
from fedguard.simulations.cohort_trainers import (
    OneAtATime,
    Vectorised,
    VirtualClients,
    cohort_trainer,
)
from fedguard.simulations.secure_cohort import SecureCohort
from fedguard.task import get_weights


def _parts(tmp_path: Path, **changes):
    config = SimulationConfig(out=tmp_path / "out", dataset="digits", clients=4, **changes)
    data = federated_data(config)
    trainer = LocalTrainer(model=initial_model(config, data), dp=not config.no_dp)
    clients = VirtualClients(
        config=config, data=data, device=torch.device("cpu"), state_dir=tmp_path / "state"
    )
    return config, trainer, clients


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        (dict(model="logreg"), Vectorised),  # auto: every model it can batch (#18)
        (dict(model="cnn"), Vectorised),
        (dict(model="cnn", vectorize="on"), Vectorised),
        (dict(model="logreg", vectorize="off"), OneAtATime),
        (dict(model="logreg", no_dp=True), OneAtATime),  # nothing private to vectorise
        (dict(model="logreg", secagg=True), SecureCohort),
    ],
)
def test_the_mode_follows_the_configuration(tmp_path: Path, changes: dict, mode: type):
    config, trainer, clients = _parts(tmp_path, **changes)
    assert type(cohort_trainer(config=config, trainer=trainer, clients=clients)) is mode


def test_one_client_trains_on_its_own_data_with_its_own_accountant(tmp_path: Path):
    _, trainer, clients = _parts(tmp_path, model="logreg", rounds=2)
    start = get_weights(trainer.model)
    one = OneAtATime(trainer=trainer, clients=clients)
    first = one.train_one(1, 2, start)
    assert isinstance(first, ClientUpdate) and first.client_id == 2
    assert first.num_examples == clients.size(2) and first.epsilon is not None
    again = one.train_one(1, 2, start)  # same round, same stream: the same update ...
    assert isinstance(again, ClientUpdate) and again.weights is not None
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, again.weights, strict=True))
    assert again.epsilon > first.epsilon  # ... but spent twice, as the accountant says


def test_a_secure_round_yields_receipts_without_weights_then_the_mean(tmp_path: Path):
    config, trainer, clients = _parts(tmp_path, model="logreg", secagg=True)
    secure = cohort_trainer(config=config, trainer=trainer, clients=clients)
    start = get_weights(trainer.model)
    out = list(secure(1, [0, 1, 2], start))
    assert isinstance(out[-1], SecureMean) and out[-1].count == 3
    replies = out[:-1]
    assert [r.client_id for r in replies] == [0, 1, 2]
    # The server side never holds an update in the clear.
    assert all(isinstance(r, ClientUpdate) and r.weights is None for r in replies)
    assert not any(isinstance(r, Refusal) for r in replies)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_summed_cohort_gives_the_sum_of_its_updates(tmp_path: Path, model: str):
    """Plain in-process rounds fold the batched updates in one product (#18); the sum is
    the per-update fold's, and the replies the same without weights."""
    config, trainer, clients = _parts(tmp_path / "a", model=model, hidden=16)
    start = get_weights(trainer.model)
    plain = Vectorised(trainer=trainer, clients=clients, budget=clients.budget)
    each = list(plain(1, [0, 1, 3], start))
    _, trainer2, clients2 = _parts(tmp_path / "b", model=model, hidden=16)
    summed = cohort_trainer(config=config, trainer=trainer2, clients=clients2)
    assert isinstance(summed, Vectorised) and summed.summed
    out = list(summed(1, [0, 1, 3], start))
    assert isinstance(out[-1], PartialSum) and out[-1].total.count == 3
    want = WeightedSum()
    for u in each:
        assert isinstance(u, ClientUpdate) and u.weights is not None
        want.add([w - g for w, g in zip(u.weights, start, strict=True)], weight=u.num_examples)
    got = out[-1].total
    assert got.total_weight == want.total_weight
    for a, b in zip(got.mean(), want.mean(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    replies = out[:-1]
    assert [r.client_id for r in replies] == [u.client_id for u in each]
    assert all(isinstance(r, ClientUpdate) and r.weights is None for r in replies)
    assert [r.epsilon for r in replies] == [u.epsilon for u in each]
    assert [r.train_loss for r in replies] == [u.train_loss for u in each]
