"""Workaround 2: a SuperNode polls its SuperLink every 0.1 s, every 1 s once idle.

Flower 1.39's Fleet loop (``flwr/supernode/start_client_internal.py``) sleeps a hard-coded
3 s when the SuperLink has nothing for the node, and 0.5 s between checks for the
ClientApp's reply. Only that module's ``time`` name is replaced, and its
``_pull_and_store_message`` wrapped to see messages arrive.
"""

from __future__ import annotations

import functools
import importlib
import time
from types import ModuleType
from typing import Any

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.version import check_flower_version
from fedguard.errors import FedguardError

__all__ = ["NAME", "SUPERNODE_MODULE", "TARGET", "check", "patch_supernode_polling"]

NAME = "supernode-poll"
SUPERNODE_MODULE = "flwr.supernode.start_client_internal"
TARGET = f"{SUPERNODE_MODULE}.time, ._pull_and_store_message"

_IDLE_SLEEP = 3  # Flower 1.39's sleep when the SuperLink had no message for the node


class CappedSleepTime:
    """Stands in for the ``time`` module inside one Flower module: ``sleep`` is capped.

    Flower's idle poll (``sleep(3)``, the SuperLink had nothing) waits ``cap`` while the
    node is busy, and ``idle_cap`` once no message has come for ``idle_after`` seconds;
    a pulled message (:meth:`busy`) makes it busy again.
    """

    def __init__(self, cap: float, *, idle_cap: float, idle_after: float) -> None:
        self.cap, self.idle_cap, self.idle_after = cap, idle_cap, idle_after
        self.last_message = time.monotonic()

    def busy(self) -> None:
        self.last_message = time.monotonic()

    def sleep(self, seconds: float) -> None:
        idle = seconds >= _IDLE_SLEEP and time.monotonic() - self.last_message > self.idle_after
        time.sleep(min(seconds, self.idle_cap if idle else self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def supernode_module() -> ModuleType:
    """Flower's SuperNode main loop module, after the version check."""
    check_flower_version()
    return importlib.import_module(SUPERNODE_MODULE)


def check() -> None:
    """Raise FedguardError unless the SuperNode module still looks as this patch expects."""
    module = supernode_module()
    current = getattr(module, "time", None)
    pull = getattr(module, "_pull_and_store_message", None)
    if not (current is time or isinstance(current, CappedSleepTime)) or not callable(pull):
        raise FedguardError(
            f"{SUPERNODE_MODULE}: `time` is not the time module or "
            "`_pull_and_store_message` is missing; patch is stale"
        )


def patch_supernode_polling(
    *, interval: float = 0.1, idle_interval: float = 1.0, idle_after: float = 10.0
) -> None:
    """Cap every ``time.sleep`` in Flower's SuperNode main loop at ``interval`` seconds,
    or at ``idle_interval`` once no message has come for ``idle_after`` seconds.

    Each poll is one TLS gRPC call the SuperLink answers: at 0.1 s an idle node costs the
    SuperLink ~5% of a core (measured, 2-core box), so 50 idle nodes would keep it busy;
    idle nodes poll every ``idle_interval`` instead, and a round's later messages (secure
    aggregation's stages, the next round) still come at ``interval``. Idempotent; a later
    call changes the settings.
    """
    if not 0 < interval <= idle_interval <= 3:
        raise ValueError(
            f"interval, idle_interval: expected seconds with 0 < interval <= idle_interval"
            f" <= 3, got {interval!r}, {idle_interval!r}"
        )
    if not idle_after >= 0:
        raise ValueError(f"idle_after: expected seconds >= 0, got {idle_after!r}")
    check()
    module = supernode_module()
    current = module.time
    if isinstance(current, CappedSleepTime):
        current.cap, current.idle_cap, current.idle_after = interval, idle_interval, idle_after
        return
    pull = module._pull_and_store_message
    clock = CappedSleepTime(interval, idle_cap=idle_interval, idle_after=idle_after)

    @functools.wraps(pull)
    def pull_and_store_message(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:  # a message came: poll fast for the ones that follow
            clock.busy()
        return run_id

    replace_attr(NAME, module, "_pull_and_store_message", pull_and_store_message)
    replace_attr(NAME, module, "time", clock)
