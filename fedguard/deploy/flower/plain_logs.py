"""Flower's log lines without colour codes: fedguard's logs are files (#17.8).

A SuperLink's log (superlink.log) is shared with the SuperExec it starts, and a node's
SuperNode log is a file too: plain text, colours only with ``--verbose``. Flower has no
setting for the SuperExec the SuperLink starts, so its command is ours: the stock
SuperExec with the plain handler (``python -m fedguard.deploy.flower plain-superexec``).
"""

from __future__ import annotations

import sys
from typing import Any

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.fleet_message_cap import SUPERLINK_CLI, superlink_cli_module
from fedguard.errors import FedguardError

__all__ = ["NAME", "TARGET", "check", "patch_superlink_plain_superexec", "plain_console"]

NAME = "plain-superexec"
TARGET = f"{SUPERLINK_CLI}._get_superexec_command"
PLAIN_SUPEREXEC_COMMAND = ("-m", "fedguard.deploy.flower", "plain-superexec")


def plain_console(*, colored: bool) -> None:
    """Flower's console log handler, coloured or not (Flower's own public switch)."""
    from flwr.common.logger import update_console_handler

    update_console_handler(colored=colored)


def check() -> None:
    """Raise FedguardError unless the SuperLink CLI still builds the SuperExec command."""
    if not callable(getattr(superlink_cli_module(), "_get_superexec_command", None)):
        raise FedguardError(f"flwr {SUPERLINK_CLI}: no _get_superexec_command to redirect")


def patch_superlink_plain_superexec() -> None:
    """Make the SuperLink start its SuperExec with plain logs. Idempotent."""
    check()
    module = superlink_cli_module()
    build = module._get_superexec_command
    if getattr(build, "fedguard_plain", False):
        return

    def superexec_command(*a: Any, **kw: Any) -> list[str]:
        command = list(build(*a, **kw))
        if command[:1] != ["flower-superexec"]:
            raise FedguardError(
                f"flwr {SUPERLINK_CLI}: expected a flower-superexec command, got {command[:1]}"
            )
        return [sys.executable, *PLAIN_SUPEREXEC_COMMAND, *command[1:]]

    superexec_command.fedguard_plain = True  # type: ignore[attr-defined]
    replace_attr(NAME, module, "_get_superexec_command", superexec_command)
