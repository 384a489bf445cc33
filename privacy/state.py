"""Durable per-client accountant state.

Flower recreates the ClientApp for every message, so an accountant held in memory lives
for one round only and epsilon would silently restart from zero each round. The store
keeps the accountant in a small JSON file, written atomically (temp file, fsync, rename)
so that a crash leaves either the previous or the new history, never a torn one.

One writer per file: the store does not lock, so two processes that update the same
client's file concurrently can lose an event. Simulations keep one file per virtual
client. A deployed node does not rely on it: its budget is recomputed from its ledger
(:mod:`fedguard.privacy.record_budget`) under a lock, and its ``accountant-*.json`` is
only a report written after each round, never read back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedguard._io import atomic_write_json
from fedguard.errors import ConfigError

from .accountants import Accountant, AccountantMethod

__all__ = ["AccountantStore"]

_FILE_MODE = 0o600  # the event list reveals how much this client trained; owner only
_DIR_MODE = 0o700


class AccountantStore:
    """One client's accountant, durable: a JSON file written atomically.

    Parameters
    ----------
    path : pathlib.Path
        The JSON file. Its folder is created (mode 0700) on the first save.
    """

    def __init__(self, *, path: Path) -> None:
        self._path = Path(path)

    def __repr__(self) -> str:
        return f"AccountantStore(path={str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The JSON file."""
        return self._path

    def load(self, *, method: AccountantMethod | str) -> Accountant:
        """The stored accountant, or a fresh one if the file does not exist yet.

        Raises
        ------
        ConfigError
            The file is not valid JSON, its content is not a valid accountant state, or it
            was written by an accountant using a different method. The message names the file.
        """
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Accountant(method=method)
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{self._path}: not a UTF-8 accountant state file ({exc.reason})"
            ) from None
        try:
            state = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:  # incl. huge integers and deep nesting
            raise ConfigError(f"{self._path}: not a valid accountant state file ({exc})") from None
        return Accountant.from_state_dict(state, method=method, source=str(self._path))

    def save(self, accountant: Accountant) -> None:
        """Write ``accountant`` atomically; the previous file survives any failure."""
        if not isinstance(accountant, Accountant):
            raise TypeError(f"accountant: expected an Accountant, got {type(accountant).__name__}")
        folder = self._path.parent
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask; be explicit
        atomic_write_json(self._path, accountant.state_dict(), mode=_FILE_MODE)


class _NonFiniteError(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    # Python's json accepts NaN/Infinity by default; an epsilon history must never.
    raise _NonFiniteError(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    # "1e999" parses to inf without passing through parse_constant.
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteError(f"non-finite number {text} is not allowed")
    return value
