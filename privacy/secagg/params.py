"""The public parameters of one secure-aggregation round, and the neighbour graph.

SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS) lets each node mask its input with only ``k`` neighbours instead of all
``n - 1`` other nodes. fedguard picks ``k`` as the smallest even degree for which, when
each node drops independently with probability ``dropout_tolerance``, the chance that any
neighbourhood loses more holders than the threshold allows is below 2**-20 (binomial
tail, union bound over the cohort), with the threshold a bare majority of the ``k + 1``
holders. Small cohorts (below about 300 at tolerance 1/3) get the complete graph, which
tolerates exactly ``floor(dropout_tolerance * (n))`` dropouts deterministically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedguard.errors import invalid

from ._hazmat import session_digest

__all__ = ["SecAggParams", "SecAggSettings", "choose_degree", "make_params", "neighbours"]

FAILURE_PROBABILITY = 2.0**-20
"""Bound on the chance that random dropouts within the tolerance abort a round (the
correctness parameter of Bell et al. 2020, Table 2)."""
RING_BITS = (32, 64)
"""Integer rings (mod 2**32 or 2**64) the masked sum lives in; numpy wraps natively."""


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """Everything every party of a round must agree on (sent by the server, checked by nodes)."""

    run: str  # the federation's name: part of every key label
    server_round: int
    cohort: int  # n: nodes asked to take part
    degree: int  # k: neighbours per node (n - 1 = complete graph)
    threshold: int  # t: shares needed out of a node's k + 1 holders
    clip_range: float
    bits: int
    weight_cap: int
    ring_bits: int
    graph_seed: int  # the server's seed for the neighbour permutation
    # The enrolled node names by slot (slot i is names[i - 1]): whose key signs for a slot.
    # Empty only until the server assigns the cohort; a node refuses a session without them.
    names: tuple[str, ...] = ()
    # c: nodes assumed to collude with the server. In the session (not each node's own
    # setting) so that every holder of a node's shares counts the same quorum.
    max_colluding: int = 0

    def __post_init__(self) -> None:
        holders = self.degree + 1
        checks = (
            ("secagg cohort", self.cohort, self.cohort >= 2, "an integer >= 2"),
            ("secagg degree", self.degree, 1 <= self.degree < self.cohort, "1 <= k < cohort"),
            (
                "secagg threshold",
                self.threshold,
                holders // 2 < self.threshold <= holders,
                f"more than half of the {holders} holders, at most all",
            ),
            ("secagg bits", self.bits, 1 <= self.bits <= 30, "an integer in [1, 30]"),
            ("secagg weight-cap", self.weight_cap, self.weight_cap >= 1, "an integer >= 1"),
            (
                "secagg max-colluding-nodes",
                self.max_colluding,
                isinstance(self.max_colluding, int) and self.max_colluding >= 0,
                "an integer >= 0",
            ),
            ("secagg ring-bits", self.ring_bits, self.ring_bits in RING_BITS, RING_BITS),
            (
                "secagg clip-range",
                self.clip_range,
                math.isfinite(self.clip_range) and self.clip_range > 0,
                "a finite number > 0",
            ),
        )
        for key, value, ok, allowed in checks:
            if isinstance(value, bool) or not ok:
                raise invalid(key, allowed=allowed, got=value)
        if self.names and (
            len(self.names) != self.cohort
            or len(set(self.names)) != len(self.names)
            or not all(isinstance(n, str) and n and "\x00" not in n for n in self.names)
        ):
            raise invalid(
                "secagg names",
                allowed=f"{self.cohort} distinct non-empty node names, one per slot",
                got=", ".join(map(str, self.names)),
            )
        if self.degree < self.cohort - 1 and self.degree % 2:
            raise invalid(
                "secagg degree", allowed="an even number below cohort - 1", got=self.degree
            )
        bound = self.cohort * self.weight_cap * (2**self.bits - 1)
        if bound >= 2**self.ring_bits:
            raise invalid(
                "secagg ring-bits",
                allowed=f"a ring holding cohort x weight-cap x 2**bits = {bound}",
                got=self.ring_bits,
                hint="the masked sum would overflow",
            )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.ring_bits == 32 else np.uint64

    def context(self) -> bytes:
        """The session: a digest of everything the server chose, bound into every key and
        seal (HKDF labels, AES-GCM AAD) and every signature.

        Run, round, cohort, degree, threshold, bits, clip range, weight cap, ring, graph
        seed and the names by slot: a server that tells two nodes different parameters (or
        a different cohort) in one round gets keys that do not agree and shares that do
        not open, and signatures that do not verify.
        """
        # Every key, seal and signature of a round derives from it (about 600 per node at
        # n = 100): computed once per parameter object, which is frozen.
        cached: bytes | None = self.__dict__.get("_context")
        if cached is not None:
            return cached
        fields = (
            self.run,
            str(self.server_round),
            str(self.cohort),
            str(self.degree),
            str(self.threshold),
            str(self.bits),
            float(self.clip_range).hex(),
            str(self.weight_cap),
            str(self.ring_bits),
            str(self.graph_seed),
            str(self.max_colluding),
            str(len(self.names)),
            *self.names,
        )
        digest = session_digest(tuple(f.encode() for f in fields))
        object.__setattr__(self, "_context", digest)
        return digest


def _tail(holders: int, p: float, allowed: int) -> float:
    """P[more than ``allowed`` of ``holders`` drop], each independently with probability p."""
    # In logs: math.comb(holders, x) overflows a float beyond ~1030 holders.
    log_p, log_q = math.log(p), math.log1p(-p)
    return sum(
        math.exp(
            math.lgamma(holders + 1)
            - math.lgamma(x + 1)
            - math.lgamma(holders - x + 1)
            + x * log_p
            + (holders - x) * log_q
        )
        for x in range(allowed + 1, holders + 1)
    )


def _threshold(holders: int, dropout_tolerance: float, *, complete: bool) -> int:
    # Never half or below: then the server could collect both kinds of share of one node.
    majority = holders // 2 + 1
    if not complete:
        # A sparse graph's tolerance is probabilistic (choose_degree): with a threshold of
        # holders - floor(tolerance * holders) a neighbourhood would lose more than allowed
        # about half the time, whatever k, so the lowest safe threshold is used.
        return majority
    # The complete graph tolerates floor(tolerance * holders) dropouts deterministically.
    return max(majority, holders - math.floor(dropout_tolerance * holders))


def choose_degree(*, cohort: int, dropout_tolerance: float) -> int:
    """The smallest even k (or ``cohort - 1``) meeting :data:`FAILURE_PROBABILITY`."""
    for k in range(2, cohort - 1, 2):
        holders = k + 1
        allowed = holders - _threshold(holders, dropout_tolerance, complete=False)
        if cohort * _tail(holders, dropout_tolerance, allowed) <= FAILURE_PROBABILITY:
            return k
    return cohort - 1


def make_params(
    *,
    run: str,
    server_round: int,
    cohort: int,
    clip_range: float,
    bits: int,
    weight_cap: int,
    dropout_tolerance: float,
    graph_seed: int,
    max_colluding: int = 0,
) -> SecAggParams:
    """Parameters for a round of ``cohort`` nodes: degree, threshold and ring chosen here."""
    if not 1 / 3 <= dropout_tolerance < 0.5:
        raise invalid(
            "secagg dropout-tolerance",
            allowed="a fraction in [1/3, 1/2)",
            got=dropout_tolerance,
        )
    degree = choose_degree(cohort=cohort, dropout_tolerance=dropout_tolerance)
    bound = cohort * weight_cap * (2**bits - 1)
    ring = next((r for r in RING_BITS if bound < 2**r), RING_BITS[-1])
    return SecAggParams(
        run=run,
        server_round=server_round,
        cohort=cohort,
        degree=degree,
        threshold=_threshold(degree + 1, dropout_tolerance, complete=degree == cohort - 1),
        clip_range=clip_range,
        bits=bits,
        weight_cap=weight_cap,
        ring_bits=ring,
        graph_seed=graph_seed,
        max_colluding=max_colluding,
    )


@dataclass(frozen=True, kw_only=True)
class SecAggSettings:
    """What a run fixes once for all its secure rounds (both engines build one).

    :meth:`for_round` adds what each round changes and chooses degree, threshold and ring
    (:func:`make_params`). With client-level DP (``equal_weights``) every input weighs 1:
    the mechanism's sensitivity is one clipped update, and a weight above 1 would scale
    one node's influence beyond it. Otherwise a node's weight is capped at the
    ``weight_cap`` the engine names: a public constant in a deployment (nodes tell no
    count), the largest client of the cohort in a simulation (which knows every count).
    """

    run: str  # part of every key label
    clip_range: float
    bits: int
    dropout_tolerance: float
    graph_seed: int
    max_colluding: int = 0
    equal_weights: bool = False

    def for_round(self, *, server_round: int, cohort: int, weight_cap: int) -> SecAggParams:
        """The parameters of round ``server_round`` for ``cohort`` nodes."""
        return make_params(
            run=self.run,
            server_round=server_round,
            cohort=cohort,
            clip_range=self.clip_range,
            bits=self.bits,
            weight_cap=1 if self.equal_weights else weight_cap,
            dropout_tolerance=self.dropout_tolerance,
            graph_seed=self.graph_seed,
            max_colluding=self.max_colluding,
        )


def neighbours(params: SecAggParams, slot: int) -> list[int]:
    """Slots adjacent to ``slot`` (1..cohort): a Harary graph over a seeded permutation."""
    n = params.cohort
    if not 1 <= slot <= n:
        raise ValueError(f"slot: expected 1..{n}, got {slot}")
    if params.degree >= n - 1:
        return [s for s in range(1, n + 1) if s != slot]
    order = np.random.default_rng([params.graph_seed, params.server_round]).permutation(n) + 1
    pos = int(np.flatnonzero(order == slot)[0])
    half = params.degree // 2
    return sorted(int(order[(pos + d) % n]) for d in range(-half, half + 1) if d != 0)
