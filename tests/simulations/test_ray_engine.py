"""``--engine ray``: a cohort sharded over workers gives one worker's results and epsilons.

The attack on accounting: a client trained by worker 0 in one round and by worker 1 in
the next. Accountants kept per worker would each hold one round, and the client's file
would show half its spend (or a dp-scaling release charged twice, or never). The fast
tests run the engine's own workers and driver in this process (Ray's transport replaced
by direct calls); one test runs them on a real local Ray cluster of two CPU workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.files import ACCOUNTANT_FILE, METRICS_FILE, MODEL_FILE
from fedguard.fl.data import FederatedData, clear_data_cache
from fedguard.fl.loop import WeightedSum, sample_cohort
from fedguard.simulations import ray_engine
from fedguard.simulations.runner import STATE_DIR, simulate
from fedguard.simulations.virtual_clients import client_state_dir

BASE = SimulationConfig(
    dataset="digits",
    model="mlp",
    hidden=16,
    clients=8,
    clients_per_round=5,
    rounds=3,
    batch_size=16,
    lr=0.5,
    epsilon=3.0,
    seed=2,  # clients 4 and 5 are trained by both workers (_moved_clients)
)
EXACT = ("round", "epsilon_max", "epsilon_mean", "clients", "refused")
SCHEMA = """
[target]
column = "label"
labels = ["neg", "pos"]
[columns.x1]
type = "numeric"
range = [-4, 4]
scaling = "dp"
[columns.x2]
type = "numeric"
centre = 10
scale = 3
"""


class _Direct:
    """A worker called in this process: ``worker.train_slice.remote(...)`` runs it."""

    def __init__(self, worker: ray_engine.SliceWorker) -> None:
        self.train_slice = type("_M", (), {"remote": staticmethod(worker.train_slice)})


@contextmanager
def _direct_cohort(
    *, config: SimulationConfig, data: FederatedData, state_dir: Path
) -> Iterator[ray_engine.RayCohort]:
    """ray_cohort without Ray: the same workers and driver, called directly."""
    accounts = ray_engine._Accounts(config=config, data=data, state_dir=state_dir)
    workers = [
        _Direct(ray_engine.SliceWorker(config=config, data=data, device="cpu", state_dir=state_dir))
        for _ in range(config.workers)
    ]
    try:
        yield ray_engine.RayCohort(
            workers=workers, accounts=accounts, put=lambda x: x, get=lambda x: x
        )
    finally:
        accounts.flush()


def _run(config: SimulationConfig, out: Path) -> Path:
    simulate(config.replace(out=out), overwrite=True)
    return out


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def _accountants(out: Path, clients: int) -> dict[int, Any]:
    found = {}
    for cid in range(clients):
        path = client_state_dir(out / STATE_DIR, cid) / ACCOUNTANT_FILE
        if path.exists():
            found[cid] = json.loads(path.read_text())
    return found


def _same_results(
    ref: Path, other: Path, *, clients: int, exact_model: bool, atol: float = 1e-5
) -> None:
    """Epsilons, counts and accountant files equal; metrics and model to ``atol``."""
    a, b = _rows(ref), _rows(other)
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert {k: ra[k] for k in EXACT} == {k: rb[k] for k in EXACT}
        assert rb["loss"] == pytest.approx(ra["loss"], abs=atol)
        assert rb["accuracy"] == pytest.approx(ra["accuracy"], abs=0.01)
    accountants = _accountants(ref, clients)
    assert accountants and accountants == _accountants(other, clients)
    ma, mb = load_file(str(ref / MODEL_FILE)), load_file(str(other / MODEL_FILE))
    assert ma.keys() == mb.keys()
    for key in ma:
        if exact_model:
            np.testing.assert_array_equal(ma[key], mb[key])
        else:
            np.testing.assert_allclose(ma[key], mb[key], rtol=0, atol=atol)


def _moved_clients(config: SimulationConfig) -> set[int]:
    """Clients trained by different workers in different rounds (what the attack needs)."""
    seen: dict[int, set[int]] = {}
    for rnd in range(1, config.rounds + 1):
        cohort = sample_cohort(
            seed=config.seed,
            server_round=rnd,
            num_clients=config.clients,
            cohort_size=config.cohort_size,
        )
        for k, part in enumerate(ray_engine.shard(cohort, config.workers)):
            for cid in part:
                seen.setdefault(cid, set()).add(k)
    return {cid for cid, ks in seen.items() if len(ks) > 1}


def test_shard_keeps_cohort_order_in_contiguous_non_empty_slices():
    cohort = [7, 2, 9, 4, 1]
    for workers in range(1, 8):
        parts = ray_engine.shard(cohort, workers)
        assert [c for p in parts for c in p] == cohort
        assert all(parts) and len(parts) == min(workers, len(cohort))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_merged_partial_sums_equal_one_running_sum():
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(3, 4)).astype(np.float32)] for _ in range(7)]
    weights = [float(w) for w in rng.integers(1, 50, size=7)]
    whole, left, right = WeightedSum(), WeightedSum(), WeightedSum()
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        whole.add(u, weight=w)
        (left if i < 3 else right).add(u, weight=w)
    merged = WeightedSum()
    merged.merge(left)
    merged.merge(WeightedSum())  # a slice whose clients all refused
    merged.merge(right)
    assert (merged.count, merged.total_weight) == (whole.count, whole.total_weight)
    np.testing.assert_allclose(merged.mean()[0], whole.mean()[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"engine": "ray", "secagg": True}, "--engine"),
        ({"workers": 2}, "--workers"),
        ({"engine": "ray", "workers": 0}, "--workers"),
        ({"engine": "ray", "workers": 6}, "--workers"),  # more than the cohort
        ({"ray_address": "auto"}, "--ray-address"),
        ({"engine": "ray", "ray_address": " "}, "--ray-address"),
    ],
)
def test_refused_in_one_line_naming_the_option(changes: dict[str, Any], key: str):
    with pytest.raises(ConfigError, match=f"^{key}: expected ") as err:
        BASE.replace(**changes)
    assert "\n" not in str(err.value)


def test_more_workers_than_the_cluster_schedules_is_refused_before_starting_any():
    config = BASE.replace(engine="ray", workers=3)
    for resources, gpus in (({"CPU": 2.0}, 0), ({"CPU": 8.0, "GPU": 2.0}, 1)):
        with pytest.raises(ConfigError, match=r"^--workers: expected at most 2 \(") as err:
            ray_engine._check_resources(resources, config=config, gpus=gpus)
        assert "\n" not in str(err.value)
    ray_engine._check_resources({"CPU": 3.0}, config=config, gpus=0)


@pytest.mark.parametrize("vectorize", ["auto", "off"])  # batched, one client at a time
def test_two_workers_account_like_one_process_when_clients_move_between_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vectorize: str
):
    monkeypatch.setattr(ray_engine, "ray_cohort", _direct_cohort)
    base = BASE.replace(vectorize=vectorize)
    config = base.replace(engine="ray", workers=2)
    assert _moved_clients(config), "the attack needs a client trained by both workers"
    ref = _run(base, tmp_path / "inprocess")
    one = _run(base.replace(engine="ray", workers=1), tmp_path / "one")
    two = _run(config, tmp_path / "two")
    _same_results(ref, one, clients=BASE.clients, exact_model=True)
    _same_results(ref, two, clients=BASE.clients, exact_model=False)


def test_dp_scaling_release_is_charged_once_whichever_worker_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(ray_engine, "ray_cohort", _direct_cohort)
    clear_data_cache()
    rng = np.random.default_rng(0)
    lines = ["x1,x2,label"]
    for _ in range(400):
        pos = bool(rng.integers(0, 2))
        lines.append(
            f"{rng.normal(2.5 if pos else 1.5, 0.3):.4f},{rng.normal(10, 3):.4f},"
            f"{'pos' if pos else 'neg'}"
        )
    data, schema = tmp_path / "data.csv", tmp_path / "schema.toml"
    data.write_text("\n".join(lines) + "\n")
    schema.write_text(SCHEMA)
    base = BASE.replace(
        dataset=str(data), schema=schema, model="logreg", clients=6, clients_per_round=4
    )
    config = base.replace(engine="ray", workers=2)
    assert _moved_clients(config)
    ref = _run(base, tmp_path / "inprocess")
    two = _run(config, tmp_path / "two")
    _same_results(ref, two, clients=base.clients, exact_model=False)
    clear_data_cache()


def test_a_worker_failing_mid_slice_still_returns_what_its_clients_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A crash must not forget a spend: the slice's states come back with the error."""
    monkeypatch.setattr(ray_engine, "ray_cohort", _direct_cohort)
    real_init = ray_engine.SliceWorker.__init__

    def failing_after_one(self: ray_engine.SliceWorker, **kw: Any) -> None:
        real_init(self, **kw)
        train = self.train

        def first_then_fail(*args: Any) -> Iterator[Any]:
            replies = iter(train(*args))
            yield next(replies)
            raise RuntimeError("worker lost mid-slice")

        self.train = first_then_fail

    monkeypatch.setattr(ray_engine.SliceWorker, "__init__", failing_after_one)
    config = BASE.replace(engine="ray", workers=2, vectorize="off")  # one client at a time
    with pytest.raises(RuntimeError, match="worker lost mid-slice"):
        _run(config, tmp_path / "failed")
    first = ray_engine.shard(
        sample_cohort(seed=BASE.seed, server_round=1, num_clients=BASE.clients, cohort_size=5), 2
    )
    spent = _accountants(tmp_path / "failed", BASE.clients)
    assert set(spent) == {part[0] for part in first}  # each worker's first client, on disk
    assert all(state["events"] for state in spent.values())


def test_a_dead_worker_does_not_lose_the_other_slices_spend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """When one worker's ray.get raises (the worker died: its slice released nothing),
    every other slice's accountant states are still received (red team: the first error
    used to stop the driver from reading the rest)."""

    @contextmanager
    def first_worker_dead(**kw: Any) -> Iterator[ray_engine.RayCohort]:
        with _direct_cohort(**kw) as cohort:
            calls = {"n": 0}

            def get(result: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("worker 0 died")
                return result

            cohort._get = get
            yield cohort

    monkeypatch.setattr(ray_engine, "ray_cohort", first_worker_dead)
    config = BASE.replace(engine="ray", workers=2, vectorize="off")
    with pytest.raises(RuntimeError, match="worker 0 died"):
        _run(config, tmp_path / "dead")
    first = ray_engine.shard(
        sample_cohort(seed=BASE.seed, server_round=1, num_clients=BASE.clients, cohort_size=5), 2
    )
    spent = _accountants(tmp_path / "dead", BASE.clients)
    assert set(first[1]) <= set(spent)  # worker 1's whole slice is on disk


@pytest.mark.deploy  # starts a real local Ray cluster (~30 s here)
def test_a_local_ray_cluster_of_two_workers_gives_one_workers_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ray = pytest.importorskip("ray")
    for key, value in ray_engine.RAY_ENV.items():
        monkeypatch.setenv(key, value)
    ray.shutdown()  # none left by an earlier test: the engine starts its own
    ref = _run(BASE, tmp_path / "inprocess")
    two = _run(BASE.replace(engine="ray", workers=2), tmp_path / "two")  # starts 2 CPUs
    assert not ray.is_initialized()  # the cluster it started is shut down
    _same_results(ref, two, clients=BASE.clients, exact_model=False)
