"""Workaround 7: a SuperNode's heartbeat survives a server error.

Flower's ``HeartbeatSender`` retries only UNAVAILABLE and DEADLINE_EXCEEDED: any other
error (such as INTERNAL from a locked database) ends it for good, the SuperLink marks the
node offline, and it is never sent a message again although its process lives. Here
INTERNAL and UNKNOWN are retried like a lost connection; authentication errors (a revoked
key) still end the heartbeat.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.version import check_flower_version
from fedguard.errors import FedguardError

__all__ = ["NAME", "TARGET", "check", "patch_heartbeat_retry"]

NAME = "heartbeat-retry"
_MODULE = "flwr.supercore.heartbeat"
TARGET = f"{_MODULE}.HeartbeatSender._heartbeat"


def check() -> None:
    """Raise FedguardError unless ``HeartbeatSender._heartbeat`` and its failure type exist."""
    check_flower_version()
    hb = importlib.import_module(_MODULE)
    sender = getattr(hb, "HeartbeatSender", None)
    if not callable(getattr(sender, "_heartbeat", None)) or not hasattr(hb, "HeartbeatFailure"):
        raise FedguardError("flwr HeartbeatSender._heartbeat is missing; patch is stale")


def patch_heartbeat_retry() -> None:
    """Retry a SuperNode heartbeat that failed with INTERNAL or UNKNOWN. Idempotent."""
    check()
    import grpc

    hb = importlib.import_module(_MODULE)
    sender = hb.HeartbeatSender
    original = sender._heartbeat
    if getattr(original, "fedguard_retries", False):
        return
    transient = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

    @functools.wraps(original)
    def heartbeat(self: Any) -> None:
        try:
            original(self)
        except grpc.RpcError as err:
            if err.code() in transient:
                raise hb.HeartbeatFailure from err
            raise

    heartbeat.fedguard_retries = True  # type: ignore[attr-defined]
    replace_attr(NAME, sender, "_heartbeat", heartbeat)
