"""Every workaround that changes Flower's code, with what it changes and how to undo it.

Each :class:`Workaround` names the Flower target it replaces, applies itself (after the
version check and a check of the target's shape), restores what it replaced, and checks
that the target still looks as it expects without changing anything. The entry points
apply them with :func:`apply_all`; tests undo them with :func:`restore_all`. Workarounds
1 (``fedguard.transport.poll.send_and_receive``) and 4 (``env.FAST_POLL_ENV``) change no Flower code
and are not here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fedguard.deploy.flower import (
    _originals,
    bundle_check,
    fleet_message_cap,
    heartbeat_interval,
    heartbeat_retry,
    payload_backoff,
    plain_logs,
    sql_deferral,
    sqlite_busy_timeout,
    superexec_fork,
    supernode_poll,
    warm_clientapp,
)
from fedguard.errors import invalid

__all__ = ["REGISTRY", "Workaround", "applied", "apply_all", "check_all", "restore_all"]


@dataclass(frozen=True)
class Workaround:
    """One change to Flower's code.

    Attributes
    ----------
    name
        Its registry name (what it does).
    target
        The Flower names it replaces.
    process
        Where fedguard applies it: ``supernode``, ``superexec``, ``superlink``, ``serverapp``.
    apply
        Applies it; keyword options as its patch function takes them. Idempotent.
    restore
        Puts back what it replaced (a no-op if it is not applied).
    check
        Raises ``FedguardError`` unless the installed Flower is the pinned one and the
        target still has the shape the patch expects; changes nothing.
    """

    name: str
    target: str
    process: str
    apply: Callable[..., None]
    restore: Callable[[], None]
    check: Callable[[], None]


def _entry(module: ModuleType, apply: Callable[..., None], process: str) -> Workaround:
    name: str = module.NAME
    return Workaround(
        name=name,
        target=module.TARGET,
        process=process,
        apply=apply,
        restore=functools.partial(_originals.restore, name),
        check=module.check,
    )


REGISTRY: Mapping[str, Workaround] = {
    w.name: w
    for w in (
        # 2. SuperNode idle poll: 3 s -> 0.1 s (1 s once idle)
        _entry(supernode_poll, supernode_poll.patch_supernode_polling, "supernode"),
        # 3. payload pull back-off: 1 s -> 0.05 s
        _entry(payload_backoff, payload_backoff.patch_object_pull_backoff, "all"),
        # 5. SuperNode starts fedguard's SuperExec
        _entry(warm_clientapp, warm_clientapp.patch_supernode_warm_clientapp, "supernode"),
        # 5. SuperExec forks each ClientApp from a pre-imported process
        _entry(superexec_fork, superexec_fork.patch_superexec_fork, "superexec"),
        # 6. SQLite waits 30 s for a lock
        _entry(sqlite_busy_timeout, sqlite_busy_timeout.patch_sqlite_busy_timeout, "superlink"),
        # 7. heartbeat retries INTERNAL and UNKNOWN
        _entry(heartbeat_retry, heartbeat_retry.patch_heartbeat_retry, "supernode"),
        # 9. no SQLAlchemy/Alembic in a node
        _entry(sql_deferral, sql_deferral.defer_sql_stores, "supernode"),
        # 10. Fleet API message cap (option: limit)
        _entry(fleet_message_cap, fleet_message_cap.patch_fleet_message_cap, "superlink"),
        # 11. heartbeat every 10 s
        _entry(heartbeat_interval, heartbeat_interval.patch_heartbeat_interval, "supernode"),
        # 12. app-bundle check (option: check_bundle)
        _entry(bundle_check, bundle_check.patch_supernode_bundle_check, "supernode"),
        # plain log lines in the SuperLink's SuperExec (#17.8)
        _entry(plain_logs, plain_logs.patch_superlink_plain_superexec, "superlink"),
    )
}
"""Every workaround, by name."""


def _known(names: Iterable[str]) -> list[str]:
    names = list(names)
    for name in names:
        if name not in REGISTRY:
            raise invalid("workaround", allowed=sorted(REGISTRY), got=name)
    return names


def apply_all(
    names: Iterable[str], *, options: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Apply the workarounds ``names``, in that order.

    Parameters
    ----------
    names
        Registry names; an unknown one is refused before anything is applied.
    options
        Keyword options by name, for those that take them (``fleet-message-cap``:
        ``limit``; ``bundle-check``: ``check_bundle``).
    """
    names, options = _known(names), options or {}
    for name in _known(options):
        if name not in names:
            raise invalid("options", allowed="options of the workarounds applied", got=name)
    for name in names:
        REGISTRY[name].apply(**options.get(name, {}))


def applied() -> list[str]:
    """The workarounds that have replaced something in this process, in registry order."""
    return [name for name in REGISTRY if _originals.changed(name)]


def restore_all() -> list[str]:
    """Undo every workaround applied in this process, newest first; their names."""
    return _originals.restore_all()


def check_all(names: Iterable[str] | None = None) -> None:
    """Check that every workaround's target (or those of ``names``) still fits it."""
    for name in _known(REGISTRY if names is None else names):
        REGISTRY[name].check()
