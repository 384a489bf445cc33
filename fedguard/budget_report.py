"""What a node's data protection officer asks first: per data set, the epsilon spent, what
is left under ``privacy.max-epsilon``, and each run's share (``fedguard budget``).

Read from the node's hash-chained ledger (:mod:`fedguard.privacy.ledger`, verified on
every read) and nothing else: no torch, opacus or Flower import, so it answers at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from fedguard.deploy_config import NodeConfig
from fedguard.files import LEDGER_FILE
from fedguard.privacy.ledger import Ledger

__all__ = ["DatasetBudget", "NodeBudget", "RunSpend", "node_budget"]


@dataclass(frozen=True, kw_only=True)
class RunSpend:
    run: str
    first_round: int
    last_round: int
    released: int  # rounds committed: their update may have left the node
    pending: int  # begun, never committed (interrupted): counted as spent
    void: int  # never released, given back
    epsilon_after: float  # the data set's epsilon after this run's newest counted round


@dataclass(frozen=True, kw_only=True)
class DatasetBudget:
    fingerprint: str  # the ledger's keyed data-set identity
    spent: float  # the most-spent record's epsilon, every run together
    left: float  # max-epsilon minus spent, never below 0
    delta: list[float]
    accountant: list[str]
    runs: list[RunSpend] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class NodeBudget:
    node: str
    ledger: str
    entries: int
    head: str
    max_epsilon: float
    datasets: list[DatasetBudget] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def node_budget(*, cfg: NodeConfig) -> NodeBudget:
    """The budget of ``cfg``'s node from its ledger (an absent ledger: nothing spent).

    Raises
    ------
    LedgerError
        The ledger fails verification (the message names the first problem).
    """
    path = cfg.node.state_dir / LEDGER_FILE
    ledger = Ledger(path=path)
    entries = ledger.entries()
    committed, voided = ledger.committed(), ledger.voided()
    by_set: dict[str, list] = {}
    for e in entries:
        if e.kind == "pending":
            by_set.setdefault(e.dataset_fingerprint or "", []).append(e)
    cap = cfg.privacy.max_epsilon
    sets = []
    for fp, rows in sorted(by_set.items()):
        counted = [e for e in rows if e.hash not in voided]
        spent = max((e.epsilon_after or 0.0 for e in counted), default=0.0)
        runs: dict[str, list] = {}
        for e in rows:
            runs.setdefault(e.run or "", []).append(e)
        spends = []
        for run, rs in runs.items():  # ledger order: oldest run first
            kept = [e for e in rs if e.hash not in voided]
            spends.append(
                RunSpend(
                    run=run,
                    first_round=min(e.server_round or 0 for e in rs),
                    last_round=max(e.server_round or 0 for e in rs),
                    released=sum(e.hash in committed for e in kept),
                    pending=sum(e.hash not in committed for e in kept),
                    void=len(rs) - len(kept),
                    epsilon_after=max((e.epsilon_after or 0.0 for e in kept), default=0.0),
                )
            )
        sets.append(
            DatasetBudget(
                fingerprint=fp,
                spent=spent,
                left=_left(cap, spent),
                delta=sorted({e.delta for e in rows if e.delta is not None}),
                accountant=sorted({e.accountant for e in rows if e.accountant}),
                runs=spends,
            )
        )
    return NodeBudget(
        node=cfg.node.name,
        ledger=str(path),
        entries=len(entries),
        head=ledger.head(),
        max_epsilon=cap,
        datasets=sets,
    )


def _left(cap: float, spent: float) -> float:
    """max-epsilon minus spent, never below 0; a float rounding of a run calibrated to
    exactly the cap (``1.3e-15`` left of 3) is nothing left."""
    left = cap - spent
    return 0.0 if left <= 1e-9 * max(1.0, cap) else left
