"""The in-process engine's vectorised clients give the results of one client at a time."""

import json
from pathlib import Path

import pytest
import torch

from fedguard.config import SimulationConfig
from fedguard.errors import BudgetExceededError, ConfigError
from fedguard.fl.local import CohortMember, LocalResult, LocalTrainer
from fedguard.fl.loop import client_generator, federated_data, initial_model, request_for
from fedguard.privacy import AccountantStore
from fedguard.simulations.cohort_trainers import vectorizes
from fedguard.simulations.runner import simulate
from fedguard.simulations.virtual_clients import budget_for
from fedguard.task import build_model, get_weights


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
        # A convolutional model, forced on.
        dict(model="cnn", clients=4, batch_size=32, rounds=2, lr=0.3, vectorize="on"),
    ],
)
def test_vectorized_rounds_equal_one_client_at_a_time(tmp_path: Path, settings: dict) -> None:
    on, on_files = _run(tmp_path, "on", **settings)
    off, off_files = _run(tmp_path, "off", **{**settings, "vectorize": "off"})
    assert len(on) == len(off) == settings["rounds"]
    for a, b in zip(on, off, strict=True):
        assert a["clients"] == b["clients"] and a["refused"] == b["refused"] == 0
        assert a["epsilon_max"] == b["epsilon_max"] and a["epsilon_mean"] == b["epsilon_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=2 / 360)
    # Every client's accountant on disk: byte for byte the same events.
    assert on_files == off_files and len(on_files) == settings["clients"]


def test_auto_vectorizes_linear_models_only() -> None:
    def model(name: str) -> torch.nn.Module:
        return build_model(name=name, input_shape=(1, 8, 8), num_classes=10)

    assert vectorizes(mode="auto", model=model("mlp"))
    assert vectorizes(mode="auto", model=model("logreg"))
    assert not vectorizes(mode="auto", model=model("cnn"))
    assert vectorizes(mode="on", model=model("cnn"))
    assert not vectorizes(mode="off", model=model("mlp"))


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
