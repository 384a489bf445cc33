"""Virtual clients' accountants kept in memory while the in-process engine runs.

A deployed node writes its accountant to disk before every round (write-ahead, fsync'd):
a crash must never forget a spend. A simulation has no such need (a crashed simulation is
rerun from scratch), and at ~4 ms per fsync'd file the writes cost as much as training a
small client. So the in-process engine restores and records each client's accountant
through :class:`AccountantCache`, which holds the state in memory (the same JSON-able
``state_dict`` the file holds) and writes every client's file once, when the run ends,
also when it ends with an error. The files are byte-for-byte what per-round writes
would have left (the parity test compares them with the Flower engine's).
"""

from __future__ import annotations

from pathlib import Path

from fedguard.files import ACCOUNTANT_FILE
from fedguard.privacy import Accountant, AccountantMethod, AccountantStore
from fedguard.simulations.virtual_clients import client_state_dir

__all__ = ["AccountantCache"]


class AccountantCache:
    """Every virtual client's accountant state, in memory until :meth:`flush`.

    Parameters
    ----------
    state_dir : pathlib.Path
        The simulation's state folder; client ``c`` is flushed to
        ``client_state_dir(state_dir, c) / "accountant.json"``.
    """

    def __init__(self, *, state_dir: Path) -> None:
        self._state_dir = Path(state_dir)
        self._states: dict[Path, dict[str, object]] = {}

    def store(self, client_id: int) -> AccountantStore:
        """The store :class:`~fedguard.fl.local.LocalTrainer` uses for one client."""
        path = client_state_dir(self._state_dir, client_id) / ACCOUNTANT_FILE
        return _CachedStore(path=path, states=self._states)

    def flush(self) -> int:
        """Write every client's accountant file (atomically); returns how many."""
        for path, state in self._states.items():
            AccountantStore(path=path).save(Accountant.from_state_dict(state, source=str(path)))
        return len(self._states)


class _CachedStore(AccountantStore):
    """An :class:`AccountantStore` whose reads and writes go to a shared dict.

    A client never seen in this run falls back to its file (absent in a fresh run).
    """

    def __init__(self, *, path: Path, states: dict[Path, dict[str, object]]) -> None:
        super().__init__(path=path)
        self._states = states

    def load(self, *, method: AccountantMethod | str) -> Accountant:
        state = self._states.get(self.path)
        if state is None:
            return super().load(method=method)
        return Accountant.from_state_dict(state, method=method, source=str(self.path))

    def save(self, accountant: Accountant) -> None:
        if not isinstance(accountant, Accountant):
            raise TypeError(f"accountant: expected an Accountant, got {type(accountant).__name__}")
        self._states[self.path] = accountant.state_dict()
