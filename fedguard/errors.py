"""Errors a user can act on.

Every message names the option/key (and the file, when there is one), what is allowed
and the value received, on one line, so a command-line user or an operator reading a log
knows what to change.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "DataError",
    "FedguardError",
    "PolicyRefusalError",
    "RefusalError",
    "SecAggAbortedError",
    "SecAggError",
    "StateFileError",
    "invalid",
]


class FedguardError(Exception):
    """Base class of the errors fedguard raises on purpose.

    The tree, one sibling per thing that happened::

        FedguardError
        ├── ConfigError            an option or key has a value that is not allowed
        ├── DataError              a data file or set cannot be used as asked
        ├── RefusalError           a node refuses a round (the server is told one line)
        │   ├── BudgetExceededError    it would spend more than a privacy budget
        │   ├── PolicyRefusalError     the request breaks the node's policy
        │   └── StateFileError         its own state is unreadable, or cannot be written
        ├── SecAggError            a secure-aggregation check failed
        │   └── SecAggAbortedError     too few nodes left to unmask the round
        └── (per area: LedgerError, RecordBudgetError, NodeSecretError, WireError,
             CertificateProblem, EnrolmentError, RoundShortError, RunStoppedError, ...)
    """


class ConfigError(FedguardError, ValueError):
    """An option, config key or argument has a value that is not allowed."""


class DataError(FedguardError, ValueError):
    """A data file or data set cannot be used as asked (missing, unreadable, malformed)."""


class RefusalError(FedguardError):
    """A node refuses a round; catch this to handle every refusal alike."""


class BudgetExceededError(RefusalError):
    """Training the round would spend more than a privacy budget allows."""


class PolicyRefusalError(RefusalError):
    """The request breaks the node's own policy (node.toml [privacy], its roster, ...)."""


class StateFileError(RefusalError):
    """The node's own state (ledger, run plans, record index, ...) is unreadable or
    malformed, or cannot be written: it refuses rather than guess what it has spent.

    Not a budget overrun: nothing was spent; the operator repairs the file or the disk.
    """


class SecAggError(FedguardError):
    """A secure-aggregation check failed (bad key, tag, length or protocol state)."""


class SecAggAbortedError(SecAggError):
    """Too many nodes dropped (or misbehaved) for a round to be unmasked."""


def invalid(
    key: str,
    *,
    allowed: str | Iterable[object],
    got: object,
    source: str | Path | None = None,
    hint: str = "",
) -> ConfigError:
    """Build a one-line ``ConfigError``: ``[file: ]key: expected <allowed>, got <value>``.

    ``allowed`` is a phrase ("a number > 0") or an iterable of allowed values, which is
    rendered as ``one of a, b, c`` (build it from the registry, never by hand).
    """
    if not isinstance(allowed, str):
        allowed = "one of " + ", ".join(str(a) for a in allowed)
    if not key.isprintable():  # e.g. a quoted TOML key with a newline: keep one line
        key = repr(key)
    where = f"{source}: " if source is not None else ""
    tail = f" ({hint})" if hint else ""
    return ConfigError(f"{where}{key}: expected {allowed}, got {got!r}{tail}")
