"""The in-process engine's vectorised clients give the results of one client at a time."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fedguard.config import SimulationConfig
from fedguard.errors import BudgetExceededError, ConfigError
from fedguard.fl.data import federated_data, initial_model
from fedguard.fl.local import CohortMember, LocalResult, LocalTrainer
from fedguard.fl.loop import client_generator, request_for
from fedguard.privacy import AccountantStore
from fedguard.simulations.cohort_trainers import (
    OneAtATime,
    Vectorised,
    VirtualClients,
    cohort_trainer,
)
from fedguard.simulations.runner import simulate
from fedguard.simulations.virtual_clients import budget_for
from fedguard.task import build_model, get_weights


def _images(tmp_path: Path) -> Path:
    """150 random 3x14x14 images in 4 classes: what tb_cnn and scatter_cnn take."""
    path = tmp_path / "images.npz"
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 3, 14, 14)).astype(np.float32)
    y = rng.integers(0, 4, size=150)
    np.savez(path, x=x[:120], y=y[:120], x_test=x[120:], y_test=y[120:])
    return path


def _run(tmp_path: Path, name: str, **changes) -> tuple[list[dict], dict[str, bytes]]:
    config = SimulationConfig(out=tmp_path / name, **changes)
    simulate(config)
    rows = [json.loads(x) for x in (config.out / "metrics.jsonl").read_text().splitlines()]
    state = config.out / "state"
    files = {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*.json"))}
    return rows, files


@pytest.mark.parametrize(
    "settings",
    [
        # Unequal clients (Dirichlet), a partial cohort each round, momentum, FedProx-free.
        dict(
            model="mlp",
            hidden=32,
            clients=12,
            clients_per_round=7,
            partition="dirichlet",
            alpha=0.5,
            momentum=0.5,
            batch_size=16,
            rounds=3,
            lr=0.3,
        ),
        # Every other built-in model.
        dict(model="logreg", clients=5, batch_size=16, rounds=2, lr=0.3, momentum=0.9),
        dict(model="cnn", clients=4, batch_size=32, rounds=2, lr=0.3),
        dict(model="tb_cnn", dataset="images", clients=3, batch_size=16, rounds=2, lr=0.3),
        dict(model="scatter_cnn", dataset="images", clients=3, batch_size=16, rounds=2, lr=0.3),
    ],
    ids=lambda s: s["model"],
)
def test_vectorized_rounds_equal_one_client_at_a_time(tmp_path: Path, settings: dict) -> None:
    if settings.get("dataset") == "images":
        settings = {**settings, "dataset": str(_images(tmp_path))}
    # "on" refuses a model it cannot batch: these rounds were batched.
    on, on_files = _run(tmp_path, "on", **{**settings, "vectorize": "on"})
    off, off_files = _run(tmp_path, "off", **{**settings, "vectorize": "off"})
    assert len(on) == len(off) == settings["rounds"]
    for a, b in zip(on, off, strict=True):
        assert a["clients"] == b["clients"] and a["refused"] == b["refused"] == 0
        assert a["epsilon_max"] == b["epsilon_max"] and a["epsilon_mean"] == b["epsilon_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=2 / 360)
    # Every client's accountant on disk: byte for byte the same events.
    assert on_files == off_files and len(on_files) == settings["clients"]


class _Counted(torch.nn.Module):
    """A model with a buffer: neither stacked nor vmapped (a forward pass may update it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _mode(tmp_path: Path, model: torch.nn.Module, vectorize: str) -> object:
    config = SimulationConfig(out=tmp_path / "o", clients=3, vectorize=vectorize)
    data = federated_data(config)
    clients = VirtualClients(
        config=config, data=data, device=torch.device("cpu"), state_dir=tmp_path / "s"
    )
    trainer = LocalTrainer(model=model, dp=True)
    return cohort_trainer(config=config, trainer=trainer, clients=clients)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_auto_batches_every_built_in_model(tmp_path: Path, name: str) -> None:
    def model() -> torch.nn.Module:
        return build_model(name=name, input_shape=(1, 8, 8), num_classes=10)

    assert isinstance(_mode(tmp_path, model(), "auto"), Vectorised)
    assert isinstance(_mode(tmp_path, model(), "on"), Vectorised)
    assert isinstance(_mode(tmp_path, model(), "off"), OneAtATime)


def test_a_model_that_cannot_be_batched_trains_one_at_a_time_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="fedguard.simulations.cohort_trainers"):
        assert isinstance(_mode(tmp_path, _Counted(), "auto"), OneAtATime)
    (line,) = [r.getMessage() for r in caplog.records if "one at a time" in r.getMessage()]
    assert "vmap: has buffers (calls)" in line
    with pytest.raises(ConfigError, match=r"--vectorize: expected 'auto' or 'off'.*got 'on'"):
        _mode(tmp_path, _Counted(), "on")


def test_bad_vectorize_value_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"--vectorize.*auto.*on.*off.*'always'"):
        SimulationConfig(vectorize="always")


def test_a_spent_client_is_refused_and_the_others_train(tmp_path: Path) -> None:
    """run_cohort refuses a client over its budget before anything is spent (its file is
    unchanged) and still trains the rest of the cohort."""
    config = SimulationConfig(model="mlp", clients=4, rounds=2, epsilon=2.0, out=tmp_path / "r")
    simulate(config)
    data = federated_data(config)
    trainer = LocalTrainer(model=initial_model(config, data), dp=True)
    spent = AccountantStore(path=config.out / "state" / "client-00000" / "accountant.json")
    fresh = AccountantStore(path=tmp_path / "fresh" / "accountant.json")
    before = spent.path.read_bytes()
    members = [
        CohortMember(
            client_id=cid,
            x=torch.from_numpy(data.dataset.x_train[data.partitions[cid]]),
            y=torch.from_numpy(data.dataset.y_train[data.partitions[cid]]),
            generator=client_generator(seed=0, server_round=3, client_id=cid),
            store=store,
        )
        for cid, store in ((0, spent), (1, fresh))
    ]
    out = dict(
        trainer.run_cohort(
            global_weights=get_weights(trainer.model),
            members=members,
            request=request_for(config, 3),
            budget=budget_for(config),
        )
    )
    assert isinstance(out[0], BudgetExceededError)
    assert "round 3 refused: epsilon would reach" in str(out[0])
    assert spent.path.read_bytes() == before
    assert isinstance(out[1], LocalResult) and 0 < out[1].epsilon <= 2.0
    assert fresh.load(method="rdp").get_privacy_spent(delta=config.delta).epsilon == out[1].epsilon
