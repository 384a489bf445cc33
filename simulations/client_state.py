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
    """Every virtual client's accountant, in memory until :meth:`flush`.

    Parameters
    ----------
    state_dir : pathlib.Path
        The simulation's state folder; client ``c`` is flushed to
        ``client_state_dir(state_dir, c) / "accountant.json"``.
    """

    def __init__(self, *, state_dir: Path) -> None:
        self._state_dir = Path(state_dir)
        self._held: dict[Path, Accountant] = {}
        self._stores: dict[int, AccountantStore] = {}

    def store(self, client_id: int) -> AccountantStore:
        """The store :class:`~fedguard.fl.local.LocalTrainer` uses for one client."""
        store = self._stores.get(client_id)
        if store is None:
            path = client_state_dir(self._state_dir, client_id) / ACCOUNTANT_FILE
            store = self._stores[client_id] = _CachedStore(path=path, held=self._held)
        return store

    def flush(self) -> int:
        """Write every client's accountant file (atomically); returns how many."""
        for path, accountant in self._held.items():
            AccountantStore(path=path).save(accountant)
        return len(self._held)


class _CachedStore(AccountantStore):
    """An :class:`AccountantStore` whose reads and writes go to a shared dict (copies: a
    loaded accountant changes nothing held until it is saved).

    A client never seen in this run falls back to its file (absent in a fresh run).
    """

    def __init__(self, *, path: Path, held: dict[Path, Accountant]) -> None:
        super().__init__(path=path)
        self._held = held

    def load(self, *, method: AccountantMethod | str) -> Accountant:
        held = self._held.get(self.path)
        if held is None:
            return super().load(method=method)
        if held.method != method:  # refused as a file of another method would be
            return Accountant.from_state_dict(
                held.state_dict(), method=method, source=str(self.path)
            )
        return held.copy()

    def save(self, accountant: Accountant) -> None:
        if not isinstance(accountant, Accountant):
            raise TypeError(f"accountant: expected an Accountant, got {type(accountant).__name__}")
        self._held[self.path] = accountant.copy()
