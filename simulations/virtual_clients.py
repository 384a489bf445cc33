"""The virtual clients of a simulation: where they keep state and what budget they hold.

Shared by the in-process engine and the ClientApp under Flower's simulation engine, so a
virtual client is set up the same way whichever engine drives it.
"""

from __future__ import annotations

from pathlib import Path

from fedguard.config import SimulationConfig
from fedguard.fl.local import PrivacyBudget

__all__ = ["budget_for", "client_state_dir"]


def client_state_dir(state_dir: Path, client_id: int) -> Path:
    """Where virtual client ``client_id`` keeps its durable privacy state."""
    return state_dir / f"client-{client_id:05d}"


def budget_for(config: SimulationConfig) -> PrivacyBudget | None:
    """Virtual clients all hold the budget the researcher gave (None without DP)."""
    if config.no_dp:
        return None
    return PrivacyBudget(
        target_epsilon=config.epsilon,
        delta=config.delta,
        accountant=config.accountant,
        planned_rounds=config.rounds,
    )
