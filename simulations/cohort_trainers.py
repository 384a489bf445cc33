"""How the in-process engine trains a round's cohort: one small class per mode.

:class:`VirtualClients` holds every client's state (its tensors on the device, its
accountant file, its dp-scaling); a cohort trainer turns ``(round, cohort, global
weights)`` into the updates and refusals :func:`fedguard.fl.loop.run_rounds` folds:

* :class:`OneAtATime`: each client in turn through :class:`fedguard.fl.local.LocalTrainer`;
* :class:`Vectorised`: DP clients trained together
  (:class:`fedguard.privacy.cohort.CohortDPTrainer`);
* :class:`~fedguard.simulations.secure_cohort.SecureCohort`: under SecAgg+, every party
  in this process, batched like :class:`Vectorised` where the model allows; the server
  sees only the sum (and, with client-level DP, each input carries its noise share).

:func:`cohort_trainer` picks the mode from the configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Subset

from fedguard.config import SimulationConfig
from fedguard.errors import BudgetExceededError, ConfigError
from fedguard.fl.data import FederatedData
from fedguard.fl.local import CohortMember, LocalResult, LocalTrainer, PrivacyBudget
from fedguard.fl.loop import (
    ClientUpdate,
    PartialSum,
    Refusal,
    SecureMean,
    WeightedSum,
    client_generator,
    client_generators,
    request_for,
)
from fedguard.privacy import AccountantStore
from fedguard.simulations.client_state import AccountantCache
from fedguard.simulations.secure_cohort import SecureCohort
from fedguard.simulations.virtual_clients import budget_for
from fedguard.simulations.virtual_scaling import reserve_scaling, scale_client_rows
from fedguard.task.lazy_records import LazyDataset

__all__ = [
    "CohortTrainer",
    "OneAtATime",
    "Vectorised",
    "VirtualClients",
    "cohort_trainer",
]

_log = logging.getLogger(__name__)

Reply = ClientUpdate | Refusal | SecureMean | PartialSum


class CohortTrainer(Protocol):
    """Trains one round's cohort: what ``run_rounds`` calls ``train_cohort``."""

    def __call__(
        self, server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[Reply]: ...


class VirtualClients:
    """Every virtual client's state: data on the device, accountant, dp-scaling.

    Data moves to the device once; a client with ``scaling = "dp"`` columns scales its
    own rows with its own DP estimate the first time it is asked, charged to its
    accountant before any step (:mod:`fedguard.simulations.virtual_scaling`).
    Accountant files are written by :meth:`flush`, once, at the end.
    """

    def __init__(
        self,
        *,
        config: SimulationConfig,
        data: FederatedData,
        device: torch.device,
        state_dir: Path,
    ) -> None:
        ds = data.dataset
        self.config, self.data, self.device = config, data, device
        # A lazy task's client holds its partition's indices, not its rows: training
        # reads each step's sampled records (LocalTrainer.run(data=...)).
        self.lazy: list[Subset[Any]] | None = None
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        if isinstance(ds, LazyDataset):
            self.lazy = [Subset(ds.train, idx.tolist()) for idx in data.partitions]
        else:
            self.xs = [torch.from_numpy(ds.x_train[idx]).to(device) for idx in data.partitions]
            self.ys = [torch.from_numpy(ds.y_train[idx]).to(device) for idx in data.partitions]
        self.plan = ds.dp_scaling
        self.budget: PrivacyBudget | None = reserve_scaling(budget_for(config), self.plan)
        self.scaling_event = (
            self.budget.reserved[-1] if self.plan is not None and self.budget is not None else None
        )
        self.accountants = AccountantCache(state_dir=state_dir)
        self._scaled: set[int] = set()

    def prepare(self, cid: int) -> None:
        """Scale client ``cid``'s dp columns once, charging the release first."""
        ds = self.data.dataset
        if self.plan is None or cid in self._scaled or isinstance(ds, LazyDataset):
            return
        rows = scale_client_rows(
            ds.x_train[self.data.partitions[cid]],
            plan=self.plan,
            event=self.scaling_event,
            seed=self.config.seed,
            client_id=cid,
        )
        if self.scaling_event is not None and self.budget is not None:  # before any step
            store = self.accountants.store(cid)
            acc = store.load(method=self.budget.accountant)
            acc.compose(self.scaling_event)
            store.save(acc)
        self.xs[cid] = torch.from_numpy(rows).to(self.device)
        self._scaled.add(cid)

    def store(self, cid: int) -> AccountantStore:
        return self.accountants.store(cid)

    def generator(self, server_round: int, cid: int) -> torch.Generator:
        return client_generator(
            seed=self.config.seed, server_round=server_round, client_id=cid, device=self.device
        )

    def generators(self, server_round: int, cohort: list[int]) -> list[torch.Generator]:
        """:meth:`generator` of every client of ``cohort``, seeds hashed in one pass."""
        return client_generators(
            seed=self.config.seed, server_round=server_round, client_ids=cohort, device=self.device
        )

    def size(self, cid: int) -> int:
        return len(self.data.partitions[cid])

    def flush(self) -> None:
        self.accountants.flush()


def _update(client_id: int, result: LocalResult, *, with_weights: bool = True) -> ClientUpdate:
    return ClientUpdate(
        client_id=client_id,
        weights=result.weights if with_weights else None,
        num_examples=result.num_examples,
        train_loss=result.train_loss,
        epsilon=result.epsilon,
    )


class OneAtATime:
    """Each client of the cohort in turn, through the Flower ClientApp's own trainer."""

    def __init__(self, *, trainer: LocalTrainer, clients: VirtualClients) -> None:
        self.trainer, self.clients = trainer, clients

    def train_one(
        self, server_round: int, cid: int, global_weights: list[np.ndarray]
    ) -> ClientUpdate | Refusal:
        """Client ``cid``'s update, or its refusal when its budget would be exceeded."""
        c = self.clients
        c.prepare(cid)
        store = c.store(cid)
        try:
            data = None if c.lazy is None else c.lazy[cid]
            result = self.trainer.run(
                global_weights=global_weights,
                x=None if data is not None else c.xs[cid],
                y=None if data is not None else c.ys[cid],
                data=data,
                request=request_for(c.config, server_round),
                generator=c.generator(server_round, cid),
                budget=c.budget,
                store=store,
            )
        except BudgetExceededError as exc:
            return Refusal(client_id=cid, reason=str(exc))
        return _update(cid, result)

    def __call__(
        self, server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[Reply]:
        for cid in cohort:
            yield self.train_one(server_round, cid, global_weights)


class Vectorised:
    """The cohort's DP clients trained together, step for step as :class:`OneAtATime`.

    ``summed``: the updates come without weights, followed by their example-weighted sum
    (:class:`~fedguard.fl.loop.PartialSum`, a few thousand clients at a time), as a Ray
    worker's slice does: folding 700 small updates one by one cost more than training them.
    Secure aggregation needs each client's own update and leaves it False.
    """

    def __init__(
        self,
        *,
        trainer: LocalTrainer,
        clients: VirtualClients,
        budget: PrivacyBudget,
        summed: bool = False,
    ) -> None:
        self.trainer, self.clients, self.budget = trainer, clients, budget
        self.summed = summed

    def __call__(
        self, server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[Reply]:
        c = self.clients
        for cid in cohort:
            c.prepare(cid)
        members = [
            CohortMember(client_id=cid, x=c.xs[cid], y=c.ys[cid], generator=g, store=c.store(cid))
            for cid, g in zip(cohort, c.generators(server_round, cohort), strict=True)
        ]
        held: list[tuple[ClientUpdate, list[np.ndarray]]] = []  # summed: reply, weights
        size = sum(w.size for w in global_weights)
        for cid, result in self.trainer.run_cohort(
            global_weights=global_weights,
            members=members,
            request=request_for(c.config, server_round),
            budget=self.budget,
        ):
            if isinstance(result, BudgetExceededError):
                yield Refusal(client_id=cid, reason=str(result))
            elif not self.summed:
                yield _update(cid, result)
            else:
                held.append((_update(cid, result, with_weights=False), result.weights))
                if len(held) * size >= _FOLD_FLOATS:
                    yield from _folded(held, global_weights)
                    held = []
        if held:
            yield from _folded(held, global_weights)


_FOLD_FLOATS = 1 << 24
"""Updates held before they are folded into a partial sum (64 MiB of float32)."""


def _folded(
    held: list[tuple[ClientUpdate, list[np.ndarray]]], global_weights: list[np.ndarray]
) -> Iterator[Reply]:
    """The replies (without weights), then their updates' sum as the loop would have
    added them (each ``weights - global`` in float32, weighted by its example count, in
    float64)."""
    total = WeightedSum()
    total.add_stacked(
        [np.stack([w[j] for _, w in held]) - g for j, g in enumerate(global_weights)],
        weights=np.array([u.num_examples for u, _ in held], dtype=np.float64),
    )
    for u, _ in held:
        yield u
    yield PartialSum(total=total)


def cohort_trainer(
    *, config: SimulationConfig, trainer: LocalTrainer, clients: VirtualClients
) -> CohortTrainer:
    """The cohort trainer for ``config``: secure, vectorised or one at a time.

    ``--vectorize auto`` (and ``on``) batch every model the cohort trainer can batch:
    all the built-in models (stacked) and task models without buffers whose forward pass
    ``torch.func.vmap`` can batch (figures: ``python -m benchmarks.bench_cohort`` and
    docs/researcher.md, "Simulation benchmarks"). ``auto`` trains a model it cannot batch
    one client at a time, saying why in one log line; ``on`` refuses it.
    """
    one = OneAtATime(trainer=trainer, clients=clients)
    # Without secure aggregation the loop sees the sum only; see Vectorised.
    batched = _vectorised(config=config, trainer=trainer, clients=clients, summed=not config.secagg)
    if config.secagg:
        return SecureCohort(one=one, batched=batched, config=config)
    return batched if batched is not None else one


def _vectorised(
    *, config: SimulationConfig, trainer: LocalTrainer, clients: VirtualClients, summed: bool
) -> Vectorised | None:
    """The batched trainer, or None where the model or the configuration rules it out."""
    budget = clients.budget  # None exactly without DP: then there is nothing to vectorise
    if budget is None or config.vectorize == "off":
        return None
    try:
        if clients.lazy is not None:
            raise ConfigError(
                "the task is lazy (lazy = True): its records are read per step, and the "
                "cohort trainer batches clients' preloaded tensors"
            )
        cohort = trainer.cohort_trainer()
        if clients.xs:
            cohort.probe(clients.xs[0][:1])
    except ConfigError as exc:
        if config.vectorize == "on":
            raise ConfigError(
                f"--vectorize: expected 'auto' or 'off' for a model the cohort trainer cannot "
                f"batch, got 'on' ({exc})"
            ) from exc
        _log.info("training clients one at a time: %s", exc)
        return None
    _log.debug("cohort trainer: %s", cohort.engine)
    return Vectorised(trainer=trainer, clients=clients, budget=budget, summed=summed)
