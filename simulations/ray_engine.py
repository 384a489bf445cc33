"""``--engine ray``: a round's cohort sharded over Ray workers.

Each worker is a Ray actor holding the in-process engine's pieces (the model, every
client's data on its device, :func:`~fedguard.simulations.cohort_trainers.cohort_trainer`,
batched where the model allows). Each round the driver cuts the cohort into contiguous
slices in cohort order (:func:`shard`); a worker trains its slice with the same per-client
generators as the in-process engine and returns a partial weighted sum
(:class:`~fedguard.fl.loop.PartialSum`, float64) and its clients' replies without
weights; :func:`fedguard.fl.loop.run_rounds` folds the slices in order. The sum differs
from one worker's only by where float64 additions are grouped (relative ~1e-16, below a
float32 step of the mean in all but rare coordinates).

Privacy accounting stays where it is in the in-process engine: the driver owns every
client's accountant (memory, then one file per client at the end, also after an error).
It ships each slice's accountant states with the slice and takes back the states its
clients wrote ahead before every step, so a client trained by worker 0 in one round and
worker 1 in the next composes both rounds; a dp-scaling release is charged once, on the
driver, before the client's first slice (workers only scale the rows).

Ray pickles the data, weights and states between its own processes: that is Ray's
transport (as under Flower's simulation engine), within the cluster this run starts or
the one ``--ray-address`` names; nothing is unpickled from a file. A cluster runs the
driver's code on its nodes, so it is one trust domain.

GPUs: with ``--device cuda`` (or ``auto`` where the driver sees one) each worker reserves
one whole GPU; Ray sets ``CUDA_VISIBLE_DEVICES`` per actor, so worker k trains on its own
GPU as ``cuda:0``. ``--workers`` above the cluster's GPUs is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedguard.config import SimulationConfig, resolve_device
from fedguard.errors import ConfigError, FedguardError
from fedguard.files import ACCOUNTANT_FILE
from fedguard.fl.data import FederatedData, initial_model
from fedguard.fl.local import LocalTrainer, PrivacyBudget
from fedguard.fl.loop import ClientUpdate, PartialSum, Refusal, WeightedSum
from fedguard.privacy import Accountant, AccountantMethod, AccountantStore
from fedguard.simulations.client_state import AccountantCache
from fedguard.simulations.cohort_trainers import VirtualClients, cohort_trainer
from fedguard.simulations.process import own_process
from fedguard.simulations.virtual_clients import budget_for, client_state_dir
from fedguard.simulations.virtual_scaling import reserve_scaling, scale_client_rows
from fedguard.task.lazy_records import in_memory

__all__ = ["RayCohort", "SliceResult", "SliceWorker", "ray_cohort", "shard"]

State = dict[str, object]  # an accountant's JSON-able state_dict
# Ray reads these when it starts: no usage report, and CUDA_VISIBLE_DEVICES left alone
# for actors that reserve no GPU (the future default; silences its warning).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def shard(cohort: Sequence[int], workers: int) -> list[list[int]]:
    """``cohort`` cut into at most ``workers`` contiguous, non-empty slices, in order."""
    return [[int(c) for c in part] for part in np.array_split(list(cohort), workers) if len(part)]


@dataclass(frozen=True, kw_only=True)
class SliceResult:
    """What a worker sends back for its slice of one round."""

    total: WeightedSum  # sum of num_examples * (weights - global), float64, in slice order
    replies: tuple[ClientUpdate | Refusal, ...]  # in slice order, updates without weights
    states: dict[int, State]  # the accountant of every client that wrote one, after it
    error: Exception | None = None  # raised on the driver once the states are kept
    cpu_seconds: float = 0.0  # the worker process's CPU time on the slice (bench-ray)
    wall_seconds: float = 0.0  # the worker's wall time on the slice (bench-ray)


class _ShippedStore(AccountantStore):
    """A client's accountant as the driver shipped it; writes go back with the result."""

    def __init__(
        self, *, path: Path, cid: int, states: dict[int, State], written: set[int]
    ) -> None:
        super().__init__(path=path)
        self._cid, self._states, self._written = cid, states, written

    def load(self, *, method: AccountantMethod | str) -> Accountant:
        state = self._states.get(self._cid)
        if state is None:  # the driver ships every DP client it sends: a bug, not a fallback
            raise FedguardError(f"{self.path}: no accountant state was shipped to this worker")
        return Accountant.from_state_dict(state, method=method, source=str(self.path))

    def save(self, accountant: Accountant) -> None:
        self._states[self._cid] = accountant.state_dict()
        self._written.add(self._cid)


class _ShippedAccountants(AccountantCache):
    """The accountants of the slice being trained; never read or written as files here."""

    def __init__(self, *, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.states: dict[int, State] = {}
        self.written: set[int] = set()  # sent back: the clients whose accountant changed

    def ship(self, states: dict[int, State]) -> None:
        self.states.clear()
        self.states.update(states)
        self.written.clear()

    def changed(self) -> dict[int, State]:
        return {cid: self.states[cid] for cid in sorted(self.written)}

    def store(self, client_id: int) -> AccountantStore:
        path = super().store(client_id).path
        return _ShippedStore(path=path, cid=client_id, states=self.states, written=self.written)

    def flush(self) -> int:
        return 0  # the driver writes the files


class _SliceClients(VirtualClients):
    """A worker's virtual clients: accountants shipped per slice, scaling not charged."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.shipped = _ShippedAccountants(state_dir=kw["state_dir"])
        self.accountants = self.shipped

    def prepare(self, cid: int) -> None:
        # The driver charged the release before shipping this client (_Accounts.ship).
        if self.plan is None or cid in self._scaled:
            return
        rows = scale_client_rows(
            in_memory(self.data.dataset, where="--engine ray").x_train[self.data.partitions[cid]],
            plan=self.plan,
            event=self.scaling_event,
            seed=self.config.seed,
            client_id=cid,
        )
        self.xs[cid] = torch.from_numpy(rows).to(self.device)
        self._scaled.add(cid)


class SliceWorker:
    """One worker: trains slices of cohorts with the in-process engine's cohort trainer.

    A plain class: :func:`ray_cohort` makes it a Ray actor, tests call it directly.
    """

    def __init__(
        self, *, config: SimulationConfig, data: FederatedData, device: str, state_dir: Path
    ) -> None:
        own_process(threads=config.threads)  # as the in-process engine's
        dev = torch.device(device)
        trainer = LocalTrainer(model=initial_model(config, data).to(dev), dp=not config.no_dp)
        self.clients = _SliceClients(config=config, data=data, device=dev, state_dir=state_dir)
        self.train = cohort_trainer(config=config, trainer=trainer, clients=self.clients)

    def ready(self) -> bool:
        """True once built (the driver waits, so round 1's time is training, not start-up)."""
        return True

    def train_slice(
        self,
        server_round: int,
        cohort: list[int],
        global_weights: list[np.ndarray],
        states: dict[int, State],
    ) -> SliceResult:
        """Train ``cohort`` (a slice) from ``global_weights`` with the shipped ``states``."""
        shipped = self.clients.shipped
        shipped.ship(states)
        total, replies = WeightedSum(), []
        start, wall = time.process_time(), time.perf_counter()
        try:
            for reply in self.train(server_round, cohort, global_weights):
                if isinstance(reply, PartialSum):  # the batched trainer's own sum
                    total.merge(reply.total)
                    continue
                if isinstance(reply, ClientUpdate) and reply.weights is not None:
                    delta = [w - g for w, g in zip(reply.weights, global_weights, strict=True)]
                    total.add(delta, weight=float(reply.num_examples))
                    reply = dataclasses.replace(reply, weights=None)
                if not isinstance(reply, ClientUpdate | Refusal):
                    raise TypeError(f"a client's reply, not {type(reply).__name__}")
                replies.append(reply)
        except Exception as exc:  # sent back with what was spent so far
            return SliceResult(total=total, replies=(), states=shipped.changed(), error=exc)
        return SliceResult(
            total=total,
            replies=tuple(replies),
            states=shipped.changed(),
            cpu_seconds=time.process_time() - start,
            wall_seconds=time.perf_counter() - wall,
        )


class _Accounts:
    """The driver's side of every client's accountant, as the in-process engine's cache.

    States stay JSON-able dicts between rounds (no accountant is rebuilt per client per
    round: at 1000 clients that was ~25 ms a round here); each is checked when its file
    is written. Like the in-process cache, only clients whose accountant was written in
    this run (a step, a dp-scaling charge) get a file.
    """

    def __init__(self, *, config: SimulationConfig, data: FederatedData, state_dir: Path):
        plan = data.dataset.dp_scaling
        self.budget: PrivacyBudget | None = reserve_scaling(budget_for(config), plan)
        self.scaling = (
            self.budget.reserved[-1] if plan is not None and self.budget is not None else None
        )
        self.state_dir = state_dir
        self.states: dict[int, State] = {}
        self.written: set[int] = set()

    def _store(self, cid: int) -> AccountantStore:
        return AccountantStore(path=client_state_dir(self.state_dir, cid) / ACCOUNTANT_FILE)

    def ship(self, cohort: list[int]) -> dict[int, State]:
        """The slice's accountant states, each client's dp-scaling release charged first."""
        if self.budget is None:
            return {}  # no DP: nothing is accounted
        for cid in cohort:
            if cid in self.states:
                continue
            # First seen in this run: its file (an earlier run's spend) or a new accountant.
            acc = self._store(cid).load(method=self.budget.accountant)
            if self.scaling is not None:
                acc.compose(self.scaling)  # before any step, as VirtualClients.prepare
                self.written.add(cid)
            self.states[cid] = acc.state_dict()
        return {cid: self.states[cid] for cid in cohort}

    def receive(self, states: dict[int, State]) -> None:
        if self.budget is None:
            return
        self.states.update(states)
        self.written.update(states)

    def flush(self) -> int:
        """Write the accountant file of every client written in this run; returns how many."""
        if self.budget is None:
            return 0
        for cid in sorted(self.written):
            store = self._store(cid)
            state = self.states[cid]
            store.save(
                Accountant.from_state_dict(
                    state, method=self.budget.accountant, source=str(store.path)
                )
            )
        return len(self.written)


class RayCohort:
    """The cohort trainer of ``--engine ray``: slices out, partial sums back, in order."""

    def __init__(self, *, workers: Sequence[Any], accounts: _Accounts, put: Any, get: Any):
        self.workers, self.accounts = list(workers), accounts
        self._put, self._get = put, get  # ray.put / ray.get (tests pass their own)
        # Per round, for bench-ray: each slice's CPU and wall time, and the driver's wall
        # time from sending the slices to holding every result.
        self.cpu_seconds: list[tuple[float, ...]] = []
        self.wall_seconds: list[tuple[float, ...]] = []
        self.round_seconds: list[float] = []

    def __call__(
        self, server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal | PartialSum]:
        start = time.perf_counter()
        weights = self._put(global_weights)  # once per round, shared by every worker
        pending = [
            worker.train_slice.remote(server_round, part, weights, self.accounts.ship(part))
            for worker, part in zip(self.workers, shard(cohort, len(self.workers)), strict=False)
        ]
        # Every slice's states are kept before any error is raised: what was spent is spent,
        # also when another slice's worker died (its ray.get raises; the others are read).
        results: list[SliceResult] = []
        lost: BaseException | None = None
        for p in pending:
            try:
                results.append(self._get(p))
            except Exception as exc:  # a dead worker: its slice released nothing
                lost = lost or exc
        for result in results:
            self.accounts.receive(result.states)
        if lost is not None:
            raise lost
        self.round_seconds.append(time.perf_counter() - start)
        self.cpu_seconds.append(tuple(r.cpu_seconds for r in results))
        self.wall_seconds.append(tuple(r.wall_seconds for r in results))
        for result in results:
            if result.error is not None:
                raise result.error
        for result in results:  # slice order is cohort order
            yield from result.replies
            yield PartialSum(total=result.total)


@contextmanager
def ray_cohort(
    *, config: SimulationConfig, data: FederatedData, state_dir: Path
) -> Iterator[RayCohort]:
    """Start (or join) Ray, start ``config.workers`` workers; yield the cohort trainer.

    Every client's accountant file is written when the run ends, also after an error; a
    Ray instance this call started is shut down.
    """
    gpus = 1 if resolve_device(config.device) == "cuda" else 0
    accounts = _Accounts(config=config, data=data, state_dir=state_dir)
    ray, owned = _joined(config)
    actors: list[Any] = []
    try:
        _check_resources(ray.cluster_resources(), config=config, gpus=gpus)
        actor = ray.remote(num_cpus=config.threads, num_gpus=gpus)(SliceWorker)
        data_ref = ray.put(data)  # once in the object store; workers on a node share it
        device = "cuda" if gpus else "cpu"
        actors = [
            actor.remote(config=config, data=data_ref, device=device, state_dir=state_dir)
            for _ in range(config.workers)
        ]
        ray.get([a.ready.remote() for a in actors])
        yield RayCohort(workers=actors, accounts=accounts, put=ray.put, get=ray.get)
    finally:
        accounts.flush()
        for a in actors:
            ray.kill(a)
        if owned:
            ray.shutdown()


def _joined(config: SimulationConfig) -> tuple[Any, bool]:
    """The ``ray`` module joined to a cluster, and whether this call started that."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray, which is not installed: pip install 'fedguard[ray]' "
            "(or use --engine inprocess)"
        ) from None
    if ray.is_initialized():  # the caller's (a test's, a notebook's): joined, left running
        return ray, False
    # log_to_driver and logging_level: Ray's lines stay out of fedguard's console.
    if config.ray_address is not None:
        ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=config.workers * config.threads,
            num_gpus=torch.cuda.device_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    return ray, True


def _check_resources(resources: dict[str, float], *, config: SimulationConfig, gpus: int) -> None:
    """Refuse a worker count the cluster could never schedule (Ray would wait forever)."""
    for name, each in (("CPU", config.threads), ("GPU", gpus)):
        have = resources.get(name, 0.0)
        if each and config.workers * each > have:
            raise ConfigError(
                f"--workers: expected at most {int(have // each)} (the Ray cluster's {have:g} "
                f"{name}(s), {each} per worker), got {config.workers}"
            )
