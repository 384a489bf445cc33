"""Strategies, for both engines: how the averaged client update moves the global model.

One home for the strategy names (``[federation] strategy`` in federation.toml,
``--strategy`` for ``fedguard simulate``), the server optimisers and the factory that
turns a name into one. FedAvg(M) and FedAdam act on the (securely or plainly) averaged
update alone, so they run unchanged under secure aggregation; FedProx changes the
clients' objective (the proximal term a :class:`~fedguard.fl.loop.TrainRequest` carries),
not the aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedguard.errors import invalid

__all__ = [
    "STRATEGIES",
    "FedAdam",
    "FedAvgM",
    "ServerOptimizer",
    "client_prox_mu",
    "server_optimizer",
]

STRATEGIES: tuple[str, ...] = ("fedavg", "fedavgm", "fedadam", "fedprox")
"""Server strategies: FedAvg; FedAvgM (server-momentum); FedAdam (Reddi et al. 2021; server-lr
is Adam's step size, ~0.01, not FedAvg's 1.0); FedProx (Li et al. 2020; clients add the
proximal term prox-mu/2 ||w - w_global||^2, the server averages as FedAvg)."""


@dataclass
class FedAvgM:
    """FedAvg with server learning rate and momentum (Hsu et al. 2019, "FedAvgM").

    ``server_momentum=0`` and ``server_lr=1`` is plain FedAvg. Momentum smooths the DP
    noise in the averaged update across rounds.
    """

    server_lr: float = 1.0
    server_momentum: float = 0.0

    def __post_init__(self) -> None:
        self._velocity: list[np.ndarray] | None = None

    def apply(
        self, *, weights: Sequence[np.ndarray], mean_update: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """New global weights from the current ones and the averaged client update."""
        if self._velocity is None:
            self._velocity = [np.zeros_like(u, dtype=np.float32) for u in mean_update]
        new = []
        for i, (w, u) in enumerate(zip(weights, mean_update, strict=True)):
            self._velocity[i] = self.server_momentum * self._velocity[i] + u
            new.append((w + self.server_lr * self._velocity[i]).astype(np.float32))
        return new

    def state(self) -> list[np.ndarray]:
        return [] if self._velocity is None else [v.copy() for v in self._velocity]

    def load_state(self, velocity: Sequence[np.ndarray]) -> None:
        self._velocity = [np.asarray(v, dtype=np.float32).copy() for v in velocity] or None


class ServerOptimizer(Protocol):
    """What :func:`run_rounds` needs of a server optimiser (FedAvgM, FedAdam).

    ``state()`` is a flat list of arrays (checkpointed as "velocity") that
    ``load_state()`` accepts back.
    """

    def apply(
        self, *, weights: Sequence[np.ndarray], mean_update: Sequence[np.ndarray]
    ) -> list[np.ndarray]: ...

    def state(self) -> list[np.ndarray]: ...

    def load_state(self, velocity: Sequence[np.ndarray]) -> None: ...


@dataclass
class FedAdam:
    """Adam on the server (Reddi et al. 2021, "Adaptive Federated Optimization", ICLR).

    The averaged client update is the pseudo-gradient Δ (it already points downhill):
    ``m = beta1 m + (1 - beta1) Δ``, ``v = beta2 v + (1 - beta2) Δ²`` and
    ``w += server_lr · m / (sqrt(v) + tau)``, without bias correction, as in the paper's
    Algorithm 2. ``tau`` is the paper's adaptivity term (its epsilon). ``state()`` is the
    m arrays followed by the v arrays.
    """

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        for key, value, ok, allowed in (
            ("server-lr", self.server_lr, self.server_lr > 0, "a finite number > 0"),
            ("beta1", self.beta1, 0 <= self.beta1 < 1, "a number in [0, 1)"),
            ("beta2", self.beta2, 0 <= self.beta2 < 1, "a number in [0, 1)"),
            ("tau", self.tau, self.tau > 0, "a finite number > 0"),
        ):
            if not (math.isfinite(value) and ok):
                raise invalid(f"FedAdam {key}", allowed=allowed, got=value)
        self._m: list[np.ndarray] | None = None
        self._v: list[np.ndarray] | None = None

    def apply(
        self, *, weights: Sequence[np.ndarray], mean_update: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """New global weights from the current ones and the averaged client update."""
        if self._m is None or self._v is None:
            self._m = [np.zeros_like(u, dtype=np.float32) for u in mean_update]
            self._v = [np.zeros_like(u, dtype=np.float32) for u in mean_update]
        new = []
        for i, (w, u) in enumerate(zip(weights, mean_update, strict=True)):
            d = np.asarray(u, dtype=np.float32)
            self._m[i] = (self.beta1 * self._m[i] + (1 - self.beta1) * d).astype(np.float32)
            self._v[i] = (self.beta2 * self._v[i] + (1 - self.beta2) * d * d).astype(np.float32)
            step = self.server_lr * self._m[i] / (np.sqrt(self._v[i]) + self.tau)
            new.append((w + step).astype(np.float32))
        return new

    def state(self) -> list[np.ndarray]:
        if self._m is None or self._v is None:
            return []
        return [m.copy() for m in self._m] + [v.copy() for v in self._v]

    def load_state(self, velocity: Sequence[np.ndarray]) -> None:
        arrays = [np.asarray(a, dtype=np.float32).copy() for a in velocity]
        if not arrays:
            self._m = self._v = None
            return
        half, odd = divmod(len(arrays), 2)
        ms, vs = arrays[:half], arrays[half:]
        if odd or any(m.shape != v.shape for m, v in zip(ms, vs, strict=True)):
            raise ValueError(
                f"FedAdam state: expected m arrays then v arrays of the same shapes, "
                f"got {len(arrays)} arrays"
            )
        self._m, self._v = ms, vs


def server_optimizer(*, strategy: str, server_lr: float, server_momentum: float) -> ServerOptimizer:
    """The server optimiser of ``strategy`` (one of :data:`STRATEGIES`).

    fedadam: FedAdam with step size ``server_lr``; fedavgm: FedAvgM with
    ``server_momentum``; fedavg and fedprox: FedAvgM without momentum (FedProx changes
    the clients' objective, not the aggregation).

    Raises
    ------
    ConfigError
        ``strategy`` is not one of :data:`STRATEGIES`.
    """
    if strategy not in STRATEGIES:
        raise invalid("strategy", allowed=STRATEGIES, got=strategy)
    if strategy == "fedadam":
        return FedAdam(server_lr=server_lr)
    momentum = server_momentum if strategy == "fedavgm" else 0.0
    return FedAvgM(server_lr=server_lr, server_momentum=momentum)


def client_prox_mu(*, strategy: str, prox_mu: float) -> float:
    """The proximal coefficient the clients train with: ``prox_mu`` under FedProx, else 0."""
    return prox_mu if strategy == "fedprox" else 0.0
