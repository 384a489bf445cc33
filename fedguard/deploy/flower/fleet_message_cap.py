"""Workaround 10: the Fleet API refuses a message longer than the task can need.

The Fleet API accepts gRPC messages up to 2 GiB, and authentication is checked only once
a message has been received: three unauthenticated 512 MB ``PushMessages`` calls took a
SuperLink from 387 MB to a 2.3 GB peak. ``superlink --fedguard-max-message-bytes N`` sets
``flower_superlink.GRPC_MAX_MESSAGE_LENGTH`` (read when the Fleet server is built), so
gRPC refuses a longer message from its length prefix with RESOURCE_EXHAUSTED before
reading it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.version import check_flower_version
from fedguard.errors import FedguardError

__all__ = ["MAX_MESSAGE_FLAG", "NAME", "TARGET", "check", "patch_fleet_message_cap"]

NAME = "fleet-message-cap"
SUPERLINK_CLI = "flwr.superlink.cli.flower_superlink"
TARGET = f"{SUPERLINK_CLI}.GRPC_MAX_MESSAGE_LENGTH"
MAX_MESSAGE_FLAG = "--fedguard-max-message-bytes"


def superlink_cli_module() -> ModuleType:
    """Flower's ``flower_superlink`` module (its package exports a function of that name:
    ``import_module`` gives the module itself)."""
    check_flower_version()
    return importlib.import_module(SUPERLINK_CLI)


def check() -> None:
    """Raise FedguardError unless the SuperLink CLI still reads ``GRPC_MAX_MESSAGE_LENGTH``."""
    if not isinstance(getattr(superlink_cli_module(), "GRPC_MAX_MESSAGE_LENGTH", None), int):
        raise FedguardError(f"flwr {SUPERLINK_CLI}: no GRPC_MAX_MESSAGE_LENGTH to cap")


def patch_fleet_message_cap(limit: int) -> None:
    """Refuse Fleet API messages longer than ``limit`` bytes, from their length prefix."""
    if not limit > 0:
        raise ValueError(f"limit: expected bytes > 0, got {limit!r}")
    check()
    replace_attr(NAME, superlink_cli_module(), "GRPC_MAX_MESSAGE_LENGTH", limit)
