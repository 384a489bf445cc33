"""A node's local round: check the request against the node's budget, train, account.

This module is the one place where client training happens. The Flower ClientApp
(``fedguard.client.app``) and the in-process simulation engine both call
:meth:`LocalTrainer.run`, so both engines train, clip, add noise and count epsilon the same
way. It does not import Flower.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedguard._record_reads import dataset_size
from fedguard.errors import BudgetExceededError
from fedguard.fl.loop import TrainRequest
from fedguard.privacy import (
    Accountant,
    AccountantStore,
    DPTrainer,
    GaussianEvent,
    calibrate_noise_multiplier,
    sample_rate_for,
    steps_per_epoch,
)
from fedguard.privacy.calibration import least_noise_that_fits
from fedguard.privacy.cohort import CohortClient, CohortDPTrainer
from fedguard.task import get_weights, set_weights, train_plain

__all__ = [
    "CohortMember",
    "LocalResult",
    "LocalTrainer",
    "PrivacyBudget",
    "noise_for_budget",
]


@dataclass(frozen=True, kw_only=True)
class PrivacyBudget:
    """A node's own privacy policy: the whole federation must fit in (epsilon, delta).

    ``planned_rounds`` is the number of rounds the budget is spread over; the noise
    multiplier is calibrated once for all of them, so every round costs the same and the
    last planned round lands at (just under) ``target_epsilon``.
    """

    target_epsilon: float
    delta: float
    accountant: str
    planned_rounds: int
    min_noise_multiplier: float = 0.0  # the node never trains with less noise than this
    # Events charged to the same accountant before training (a virtual client's DP
    # feature scaling): the calibration leaves room for them within ``target_epsilon``.
    reserved: tuple[GaussianEvent, ...] = ()


@dataclass(frozen=True)
class LocalResult:
    """A node's reply for one round."""

    weights: list[np.ndarray]
    num_examples: int
    train_loss: float
    steps: int
    epsilon: float | None  # None when training without DP
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float | None


@dataclass(frozen=True, kw_only=True)
class CohortMember:
    """One virtual client of :meth:`LocalTrainer.run_cohort`."""

    client_id: int
    x: torch.Tensor  # on the trainer's device
    y: torch.Tensor
    generator: torch.Generator
    store: AccountantStore


@functools.lru_cache(maxsize=4096)
def noise_for_budget(
    *, budget: PrivacyBudget, num_examples: int, batch_size: int, local_epochs: int
) -> float:
    """Noise multiplier that spends exactly ``budget`` over the planned rounds.

    Cached: it is a pure function of its arguments and a bisection over the accountant,
    and simulations ask it for hundreds of clients with the same data size. With
    ``budget.reserved`` the reserved events and every planned round together stay within
    the target (``BudgetExceededError`` if no noise up to ``_MAX_SIGMA`` does).
    """
    steps = (
        budget.planned_rounds
        * local_epochs
        * steps_per_epoch(num_examples=num_examples, batch_size=batch_size)
    )
    q = sample_rate_for(num_examples=num_examples, batch_size=batch_size)
    sigma = calibrate_noise_multiplier(
        target_epsilon=budget.target_epsilon,
        delta=budget.delta,
        sample_rate=q,
        steps=steps,
        method=budget.accountant,
    )
    if budget.reserved:
        sigma = _with_reserved(budget, sigma=sigma, sample_rate=q, steps=steps)
    return max(sigma, budget.min_noise_multiplier)


_MAX_SIGMA = 1000.0  # calibrate_noise_multiplier's most noise too
_BISECTION_STEPS = 50


def _with_reserved(budget: PrivacyBudget, *, sigma: float, sample_rate: float, steps: int) -> float:
    """The least noise (>= ``sigma``, the figure without reservation) with which the
    reserved events and ``steps`` steps stay within the target."""

    def fits(s: float) -> bool:
        acc = Accountant(method=budget.accountant)
        for e in budget.reserved:
            acc.compose(e)
        acc.compose(GaussianEvent(noise_multiplier=s, sample_rate=sample_rate, steps=steps))
        return acc.get_privacy_spent(delta=budget.delta).epsilon <= budget.target_epsilon

    low, high = sigma, sigma
    while not fits(high):
        low, high = high, high * 2
        if high > _MAX_SIGMA:
            if fits(_MAX_SIGMA):
                high = _MAX_SIGMA
                break
            raise BudgetExceededError(
                f"epsilon {budget.target_epsilon:g} at delta {budget.delta:g}: the "
                f"{len(budget.reserved)} event(s) charged before training leave no room for "
                f"{steps} steps even at noise multiplier {_MAX_SIGMA:g}"
            )
    return least_noise_that_fits(fits=fits, low=low, high=high, halvings=_BISECTION_STEPS)


class LocalTrainer:
    """Trains one model object for any number of (virtual) clients, one call per round.

    The model and its DP wrapping are built once and reused: each call loads the global
    weights, restores the client's accountant from its store and trains.
    """

    def __init__(self, *, model: nn.Module, dp: bool, secure_mode: bool = False) -> None:
        # secure_mode: Opacus's floating-point defence for the noise (deployed nodes).
        self._dp = DPTrainer(model=model, secure_mode=secure_mode) if dp else None
        self.model = self._dp.module if self._dp is not None else model
        # Where training happens: the model's device (move the model there before this).
        self.device = next(iter(model.parameters()), torch.empty(0)).device
        self._cohort: CohortDPTrainer | None = None

    def cohort_trainer(self) -> CohortDPTrainer:
        """The vectorised trainer of :meth:`run_cohort` (ConfigError: model unsupported)."""
        if self._cohort is None:
            self._cohort = CohortDPTrainer(model=self.model)
        return self._cohort

    @property
    def private(self) -> bool:
        return self._dp is not None

    def run(
        self,
        *,
        global_weights: Sequence[np.ndarray],
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        data: Any = None,  # instead of x, y: a map-style data set, read step by step
        read_ahead: bool = False,  # with data: read the next step's records meanwhile
        request: TrainRequest,
        generator: torch.Generator,  # with DP: on the model's device (``self.device``)
        budget: PrivacyBudget | None = None,
        store: AccountantStore | None = None,
        charged: GaussianEvent | None = None,
    ) -> LocalResult:
        """Train one round; with DP, refuse (``BudgetExceededError``) rather than overspend.

        A simulated client passes its ``store``: its budget is checked and its accountant
        saved before the first gradient step. A deployed node has already checked its
        budget and written the round to its ledger; it passes the ``charged`` event, and
        exactly that event is trained (anything else is refused before the first step).
        The result's ``epsilon`` is then this round's alone: the node reports its own.
        """
        set_weights(self.model, global_weights)
        if data is None:
            if x is None or y is None:
                raise ValueError("LocalTrainer.run: pass the tensors x, y or a data set")
            # No-ops when the caller preloaded the data on the model's device (simulation).
            x, y = x.to(self.device), y.to(self.device)
            n = int(x.shape[0])
        else:
            n = dataset_size(data)  # only the sampled records are ever read
        if self._dp is None:
            stats = train_plain(
                model=self.model,
                x=x,
                y=y,
                data=data,
                epochs=request.local_epochs,
                batch_size=request.batch_size,
                lr=request.lr,
                momentum=request.momentum,
                generator=generator,
                prox_mu=request.prox_mu,
                class_weights=request.class_weights or None,
            )
            return LocalResult(
                weights=get_weights(self.model),
                num_examples=n,
                train_loss=stats.mean_loss,
                steps=stats.steps,
                epsilon=None,
                delta=None,
                noise_multiplier=None,
                sample_rate=None,
            )
        if budget is None or (store is None) == (charged is None):
            raise ValueError("DP training needs the budget and either a store or a charge")

        if charged is not None:
            # A deployed node planned the noise (fedguard.client.budget) and wrote the
            # round to its ledger already: the ledger, not an accountant file, counts it.
            sigma = charged.noise_multiplier
            accountant = Accountant(method=budget.accountant)

            def write_ahead(event: GaussianEvent) -> None:
                if event != charged:
                    raise BudgetExceededError(
                        f"round {request.server_round} refused: it would release {event}, "
                        f"not the {charged} written to the ledger"
                    )
        elif store is not None:
            sigma = noise_for_budget(
                budget=budget,
                num_examples=n,
                batch_size=request.batch_size,
                local_epochs=request.local_epochs,
            )
            accountant = store.load(method=budget.accountant)
            self._refuse_if_over_budget(
                accountant, budget=budget, sigma=sigma, n=n, request=request
            )

            saved_in = store  # narrowed: the closure below sees an AccountantStore

            def write_ahead(event: GaussianEvent) -> None:
                saved_in.save(accountant)

        else:
            raise ValueError("DP training needs the budget and either a store or a charge")

        result = self._dp.train(
            x=x,
            y=y,
            data=data,
            read_ahead=read_ahead,
            epochs=request.local_epochs,
            batch_size=request.batch_size,
            lr=request.lr,
            momentum=request.momentum,
            noise_multiplier=sigma,
            max_grad_norm=request.max_grad_norm,
            accountant=accountant,
            generator=generator,
            # Write-ahead: the epsilon is on disk as spent before the first step.
            before_training=write_ahead,
            prox_mu=request.prox_mu,
            # Public constants in (0, 1], weighting each loss before it is clipped: the
            # per-example bound, the noise and this epsilon are unchanged.
            class_weights=request.class_weights or None,
        )
        spent = accountant.get_privacy_spent(delta=budget.delta)
        return LocalResult(
            weights=get_weights(self.model),
            num_examples=n,
            train_loss=result.mean_loss,
            steps=result.steps,
            epsilon=spent.epsilon,
            delta=budget.delta,
            noise_multiplier=sigma,
            sample_rate=result.sample_rate,
        )

    def run_cohort(
        self,
        *,
        global_weights: Sequence[np.ndarray],
        members: Sequence[CohortMember],
        request: TrainRequest,
        budget: PrivacyBudget,
    ) -> Iterator[tuple[int, LocalResult | BudgetExceededError]]:
        """:meth:`run` for many virtual clients at once, vectorised (DP only).

        Each client gets the noise, budget check, write-ahead accounting and DP-SGD
        steps :meth:`run` would give it (:class:`~fedguard.privacy.cohort.CohortDPTrainer`
        draws the same random numbers from its generator); a client that would overspend
        is refused before anything is spent. Yields ``(client_id, result or refusal)``:
        refusals first, then the trained clients in order.
        """
        if self._dp is None:
            raise ValueError("run_cohort trains with DP; use run() for non-private training")
        clients: list[CohortClient] = []
        ids: list[int] = []
        # Clients with the same history and record count get the same noise and verdict:
        # each pair is decided once (a simulation's clients mostly share both).
        verdicts: dict[tuple[tuple[GaussianEvent, ...], int], float | str] = {}
        for m in members:
            n = int(m.x.shape[0])
            accountant = m.store.load(method=budget.accountant)
            verdict = verdicts.get((accountant.events, n))
            if verdict is None:
                verdict = noise_for_budget(
                    budget=budget,
                    num_examples=n,
                    batch_size=request.batch_size,
                    local_epochs=request.local_epochs,
                )
                try:
                    self._refuse_if_over_budget(
                        accountant, budget=budget, sigma=verdict, n=n, request=request
                    )
                except BudgetExceededError as exc:
                    verdict = str(exc)
                verdicts[(accountant.events, n)] = verdict
            if isinstance(verdict, str):
                yield m.client_id, BudgetExceededError(verdict)
                continue
            sigma = verdict
            store = m.store

            def write_ahead(
                _event: GaussianEvent,
                store: AccountantStore = store,
                accountant: Accountant = accountant,
            ) -> None:
                store.save(accountant)

            ids.append(m.client_id)
            clients.append(
                CohortClient(
                    x=m.x,
                    y=m.y,
                    noise_multiplier=sigma,
                    generator=m.generator,
                    accountant=accountant,
                    before_training=write_ahead,
                )
            )
        results = self.cohort_trainer().train(
            start=global_weights,
            clients=clients,
            epochs=request.local_epochs,
            batch_size=request.batch_size,
            lr=request.lr,
            momentum=request.momentum,
            max_grad_norm=request.max_grad_norm,
            prox_mu=request.prox_mu,
            class_weights=request.class_weights or None,
        )
        spent: dict[tuple[GaussianEvent, ...], float] = {}  # per history, as verdicts
        for cid, client, out in zip(ids, clients, results, strict=True):
            history = client.accountant.events
            epsilon = spent.get(history)
            if epsilon is None:
                epsilon = client.accountant.get_privacy_spent(delta=budget.delta).epsilon
                spent[history] = epsilon
            yield (
                cid,
                LocalResult(
                    weights=out.weights,
                    num_examples=int(client.x.shape[0]),
                    train_loss=out.train.mean_loss,
                    steps=out.train.steps,
                    epsilon=epsilon,
                    delta=budget.delta,
                    noise_multiplier=out.train.noise_multiplier,
                    sample_rate=out.train.sample_rate,
                ),
            )

    @staticmethod
    def _refuse_if_over_budget(
        accountant: Accountant,
        *,
        budget: PrivacyBudget,
        sigma: float,
        n: int,
        request: TrainRequest,
    ) -> None:
        q = sample_rate_for(num_examples=n, batch_size=request.batch_size)
        steps = request.local_epochs * steps_per_epoch(
            num_examples=n, batch_size=request.batch_size
        )
        event = GaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=steps)
        if accountant.would_exceed(event, delta=budget.delta, max_epsilon=budget.target_epsilon):
            now = accountant.get_privacy_spent(delta=budget.delta).epsilon
            after = accountant.epsilon_after(event, delta=budget.delta)
            raise BudgetExceededError(
                f"round {request.server_round} refused: epsilon would reach {after:.4f} > "
                f"budget {budget.target_epsilon:g} at delta {budget.delta:g} "
                f"(spent so far {now:.4f}, {budget.accountant})"
            )
