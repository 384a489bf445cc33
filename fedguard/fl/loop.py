"""What a federated round means, shared by every engine and the deployed server.

Cohort sampling, per-(round, client) seeds and the FedAvg(M) update live here once, so the
in-process engine and the Flower apps compute the same thing (the parity test relies on
it). All randomness derives from the run seed through ``numpy.random.SeedSequence``;
nothing touches a global generator.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedguard.config import SimulationConfig
from fedguard.errors import FedguardError, invalid
from fedguard.fl.seeds import Stream, stream_rng, stream_seed, stream_seeds_u64
from fedguard.fl.strategies import ServerOptimizer, client_prox_mu
from fedguard.task import Metrics

__all__ = [
    "ClientUpdate",
    "Refusal",
    "RoundRecord",
    "PartialSum",
    "RoundShortError",
    "SecureMean",
    "TrainRequest",
    "WeightedSum",
    "client_generator",
    "client_generators",
    "request_for",
    "run_rounds",
    "sample_cohort",
]

_log = logging.getLogger(__name__)


def sample_cohort(*, seed: int, server_round: int, num_clients: int, cohort_size: int) -> list[int]:
    """Client ids taking part in ``server_round`` (sorted, without replacement)."""
    if cohort_size >= num_clients:
        return list(range(num_clients))
    rng = stream_rng(seed=seed, stream=Stream.COHORT, ids=(server_round,))
    return sorted(int(i) for i in rng.choice(num_clients, size=cohort_size, replace=False))


def client_generator(
    *, seed: int, server_round: int, client_id: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """The torch generator one client uses in one round (batch sampling and DP noise).

    It lives on ``device``, where the model is: Opacus draws the noise on the parameters'
    device from it. A CUDA generator (Philox) draws other numbers than a CPU one (Mersenne
    Twister) from the same seed, so results differ between devices, never between runs.
    """
    state = stream_seed(seed=seed, stream=Stream.CLIENT, ids=(server_round, client_id))
    seed64 = int(state.generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed64)


def client_generators(
    *, seed: int, server_round: int, client_ids: Sequence[int], device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """:func:`client_generator` of each of ``client_ids``, their seeds hashed in one pass
    (the same numbers: ~0.15 us a client at 700, where one ``SeedSequence`` is ~7 us; for
    a handful of clients numpy's own is the quicker)."""
    if len(client_ids) < 32:
        return [
            client_generator(seed=seed, server_round=server_round, client_id=c, device=device)
            for c in client_ids
        ]
    seeds = stream_seeds_u64(
        seed=seed,
        stream=Stream.CLIENT,
        ids=(server_round,),
        last=np.asarray(client_ids, dtype=np.int64),
    )
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


class WeightedSum:
    """Running example-weighted sum of client updates: memory O(model), not O(cohort)."""

    def __init__(self) -> None:
        self._sum: list[np.ndarray] | None = None
        self.total_weight = 0.0
        self.count = 0

    def add(self, update: Sequence[np.ndarray], *, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"update weight: expected a number > 0, got {weight!r}")
        if self._sum is None:
            self._sum = [np.asarray(u, dtype=np.float64) * weight for u in update]
        else:
            if len(update) != len(self._sum):
                raise ValueError(f"update: expected {len(self._sum)} arrays, got {len(update)}")
            for acc, u in zip(self._sum, update, strict=True):
                if acc.shape != u.shape:
                    raise ValueError(f"update: expected shape {acc.shape}, got {u.shape}")
                acc += np.asarray(u, dtype=np.float64) * weight
        self.total_weight += weight
        self.count += 1

    def add_stacked(self, deltas: Sequence[np.ndarray], *, weights: np.ndarray) -> None:
        """:meth:`add` for K updates at once: ``deltas[j]`` is ``[K, *shape]``, stacked in
        client order, ``weights`` their K example counts. One float64 product per array
        instead of K additions (the sum's rounding order differs, not its terms)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or not (w > 0).all():
            raise ValueError(f"update weights: expected numbers > 0, got {weights!r}")
        part = WeightedSum()
        # einsum: float64 products and sums in one pass (BLAS's dgemv was 7x slower here).
        part._sum = [np.einsum("k,k...->...", w, d, dtype=np.float64) for d in deltas]
        part.total_weight, part.count = float(w.sum()), int(w.shape[0])
        self.merge(part)

    def merge(self, other: WeightedSum) -> None:
        """Fold in ``other``'s updates, as if each had been added here (float64 sums)."""
        if other._sum is None:
            return
        if self._sum is None:
            self._sum = [s.copy() for s in other._sum]
        else:
            if len(other._sum) != len(self._sum):
                raise ValueError(f"update: expected {len(self._sum)} arrays, got {len(other._sum)}")
            for acc, s in zip(self._sum, other._sum, strict=True):
                if acc.shape != s.shape:
                    raise ValueError(f"update: expected shape {acc.shape}, got {s.shape}")
                acc += s
        self.total_weight += other.total_weight
        self.count += other.count

    def mean(self) -> list[np.ndarray]:
        if self._sum is None:
            raise ValueError("no update was added: nothing to average")
        return [(s / self.total_weight).astype(np.float32) for s in self._sum]


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """What the server asks of a node for one round."""

    server_round: int
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    max_grad_norm: float = 1.0
    total_rounds: int = 1  # the run's planned rounds: nodes spread their budget over them
    federation: str = ""
    model: str = ""  # the model architecture's name (fedguard.task.MODEL_NAMES)
    prox_mu: float = 0.0  # FedProx (Li et al. 2020): (mu/2)||w - w_global||^2; 0 = off
    run_id: str = ""  # one federation run (stable across server restarts); "" = federation
    # Client-level DP (fedguard.privacy.client_dp), 0 = off: clip, noise multiplier and the
    # fewest updates a secure sum can hold (each node adds its share of the noise).
    client_clip: float = 0.0
    client_noise: float = 0.0
    client_min_contributors: int = 0
    # Public per-class loss weights in (0, 1] (fedguard.privacy.class_weights); () = none.
    class_weights: tuple[float, ...] = ()

    @property
    def run_key(self) -> str:
        """The run a node books this round's privacy spend under (ledger, plans, receipts)."""
        return self.run_id or self.federation or "unnamed"

    def __post_init__(self) -> None:
        mu = self.prox_mu
        real = not isinstance(mu, bool) and isinstance(mu, int | float)
        if not (real and math.isfinite(mu) and mu >= 0):
            raise invalid("prox-mu", allowed="a finite number >= 0", got=mu)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's trained weights for a round, with what the server may know of it."""

    client_id: int
    # None: sent under secure aggregation (see SecureMean) or summed where the client
    # trained (see PartialSum)
    weights: list[np.ndarray] | None
    num_examples: int
    train_loss: float
    epsilon: float | None = None
    receipt: object | None = None  # deployment: the node's PrivacyReceipt (fedguard.privacy)


@dataclass(frozen=True)
class PartialSum:
    """Part of the cohort's weighted update sum, added up where its clients trained (a Ray
    worker's slice, :mod:`fedguard.simulations.ray_engine`); their replies come without
    weights. The loop folds it into the round's sum like the updates it holds."""

    total: WeightedSum


@dataclass(frozen=True)
class SecureMean:
    """The cohort's weighted mean update from secure aggregation (no single update seen)."""

    mean_update: list[np.ndarray]
    count: int  # updates inside the mean
    dropped: int  # nodes that shared keys but whose update did not arrive


@dataclass(frozen=True)
class Refusal:
    """A client declined (or failed) the round; ``reason`` is logged, never trained on."""

    client_id: int
    reason: str


@dataclass(frozen=True)
class RoundRecord:
    """One line of ``metrics.jsonl``."""

    round: int
    accuracy: float
    loss: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    roc_auc: float | None
    epsilon_max: float | None  # over all clients (those never sampled have spent 0)
    epsilon_mean: float | None
    clients: int  # updates aggregated this round
    refused: int
    seconds: float
    client_epsilon: float | None = None  # client-level DP (opt-in), counted separately
    # Binary tasks (fedguard.task.metrics.Metrics): the figures a rare class needs.
    pr_auc: float | None = None
    precision_pos: float | None = None
    recall_pos: float | None = None
    f1_pos: float | None = None
    threshold: float | None = None  # class-1 probability at which to call a row positive

    def as_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


class RoundShortError(FedguardError):
    """A round aggregated fewer updates than the run needs; it is not recorded as done."""

    def __init__(self, *, server_round: int, count: int, needed: int, reasons: list[str]) -> None:
        self.server_round, self.count, self.needed = server_round, count, needed
        self.reasons = reasons  # each refusal's reason, as the round logged it
        super().__init__(
            f"round {server_round} aggregated {count} update(s), fewer than the {needed} needed"
        )


TrainCohort = Callable[
    [int, list[int], list[np.ndarray]],
    Iterable[ClientUpdate | Refusal | SecureMean | PartialSum],
]


def run_rounds(
    *,
    first_round: int,
    last_round: int,
    seed: int,
    num_clients: int,
    cohort_size: int,
    weights: list[np.ndarray],
    server: ServerOptimizer,
    train_cohort: TrainCohort,
    evaluate: Callable[[list[np.ndarray]], Metrics],
    on_round: Callable[[RoundRecord, list[np.ndarray]], None],
    epsilons: dict[int, float] | None = None,
    dp: bool = True,
    client_epsilon: Callable[[int], float] | None = None,
    min_updates: int = 0,
) -> list[np.ndarray]:
    """The federated loop every engine shares; returns the final global weights.

    ``train_cohort(round, cohort, weights)`` yields each sampled client's reply; updates
    are folded into a running sum as they arrive. Under secure aggregation it yields the
    clients' receipts (no weights) and one :class:`SecureMean`. A round where every client
    refuses, or whose secure aggregation aborted, keeps the global model unchanged; with
    ``min_updates`` (a deployment's ``min-nodes``) a round that aggregated fewer updates
    raises :class:`RoundShortError` instead of being recorded: a run that cannot make
    progress stops rather than counting empty rounds as done.
    """
    spent: dict[int, float] = dict(epsilons or {})
    for server_round in range(first_round, last_round + 1):
        start = time.perf_counter()
        cohort = sample_cohort(
            seed=seed, server_round=server_round, num_clients=num_clients, cohort_size=cohort_size
        )
        total = WeightedSum()
        secure: SecureMean | None = None
        refused = 0
        reasons: list[str] = []
        for reply in train_cohort(server_round, cohort, weights):
            if isinstance(reply, SecureMean):
                secure = reply
                continue
            if isinstance(reply, PartialSum):
                total.merge(reply.total)
                continue
            if isinstance(reply, Refusal):
                refused += 1
                reasons.append(reply.reason)
                _log.warning(
                    "round %d: client %d refused: %s", server_round, reply.client_id, reply.reason
                )
                continue
            if reply.weights is not None:
                delta = [w - g for w, g in zip(reply.weights, weights, strict=True)]
                total.add(delta, weight=float(reply.num_examples))
            if reply.epsilon is not None:
                spent[reply.client_id] = reply.epsilon
        count = secure.count if secure is not None else total.count
        if count < min_updates:
            raise RoundShortError(
                server_round=server_round, count=count, needed=min_updates, reasons=reasons
            )
        if secure is not None and secure.count:
            weights = server.apply(weights=weights, mean_update=secure.mean_update)
        elif total.count:
            weights = server.apply(weights=weights, mean_update=total.mean())
        metrics = evaluate(weights)
        eps = [spent.get(c, 0.0) for c in range(num_clients)]
        record = RoundRecord(
            round=server_round,
            accuracy=metrics.accuracy,
            loss=metrics.loss,
            precision_macro=metrics.precision_macro,
            recall_macro=metrics.recall_macro,
            f1_macro=metrics.f1_macro,
            roc_auc=metrics.roc_auc,
            epsilon_max=max(eps) if dp else None,
            epsilon_mean=float(np.mean(eps)) if dp else None,
            clients=count,
            refused=refused,
            seconds=time.perf_counter() - start,
            client_epsilon=None if client_epsilon is None else client_epsilon(server_round),
            pr_auc=metrics.pr_auc,
            precision_pos=metrics.precision_pos,
            recall_pos=metrics.recall_pos,
            f1_pos=metrics.f1_pos,
            threshold=metrics.threshold,
        )
        on_round(record, weights)
    return weights


def request_for(config: SimulationConfig, server_round: int) -> TrainRequest:
    """The round's training request, as the server sends it."""
    return TrainRequest(
        server_round=server_round,
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        max_grad_norm=config.max_grad_norm,
        total_rounds=config.rounds,
        federation="simulation",
        model=config.model,
        class_weights=config.class_weight_values,
        prox_mu=client_prox_mu(strategy=config.strategy, prox_mu=config.prox_mu),
    )
