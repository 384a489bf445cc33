"""Workaround 11: a SuperNode heartbeats every 10 s, so a crashed session ends sooner.

A SuperNode heartbeats every 30 s and the SuperLink holds it online for PATIENCE x 30 s
after the last one, refusing to activate its key again meanwhile: a node restarted after
a crash was refused for up to a minute (`fedguard client` then waits and retries, saying
so). 10 s is Flower's minimum; with workaround 7 a crashed session is released within
~20 s. Flower reads ``HEARTBEAT_DEFAULT_INTERVAL`` as a module global in the two modules
that send it, so both are set.
"""

from __future__ import annotations

import importlib

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.version import check_flower_version
from fedguard.errors import FedguardError

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_PATIENCE",
    "NAME",
    "TARGET",
    "check",
    "patch_heartbeat_interval",
]

NAME = "heartbeat-interval"
_MODULES = ("flwr.client.grpc_rere_client.connection", "flwr.supercore.heartbeat")
TARGET = ", ".join(f"{m}.HEARTBEAT_DEFAULT_INTERVAL" for m in _MODULES)

HEARTBEAT_INTERVAL_S = 10
"""A SuperNode's heartbeat interval (Flower's default 30 s; its minimum 10 s)."""
HEARTBEAT_PATIENCE = 2
"""Flower's ``HEARTBEAT_PATIENCE``: a node is online until PATIENCE x interval after its
last heartbeat, and a key that is online cannot be activated again (checked below)."""


def check() -> None:
    """Raise FedguardError unless Flower's patience and both interval globals are as expected."""
    check_flower_version()
    from flwr.common import constant

    if constant.HEARTBEAT_PATIENCE != HEARTBEAT_PATIENCE:
        raise FedguardError(f"flwr HEARTBEAT_PATIENCE is {constant.HEARTBEAT_PATIENCE}, not 2")
    for name in _MODULES:
        module = importlib.import_module(name)
        if not isinstance(getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None), int):
            raise FedguardError(f"{name}.HEARTBEAT_DEFAULT_INTERVAL is missing; patch is stale")


def patch_heartbeat_interval(seconds: int = HEARTBEAT_INTERVAL_S) -> None:
    """Heartbeat every ``seconds``. Idempotent."""
    check()
    from flwr.common import constant

    if not constant.HEARTBEAT_MIN_INTERVAL <= seconds <= constant.HEARTBEAT_MAX_INTERVAL:
        raise FedguardError(f"heartbeat interval {seconds} s is outside Flower's range")
    for name in _MODULES:
        replace_attr(NAME, importlib.import_module(name), "HEARTBEAT_DEFAULT_INTERVAL", seconds)
