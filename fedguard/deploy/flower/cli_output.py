"""Every reading of Flower's command-line and log text, in one place.

Flower 1.39 says what went wrong in three forms, and each is matched whole, never as a
bare number (a node id, a port or a timestamp can contain "2001"):

- an API error, ``[code: N] message`` (``flwr.supercore.error.ApiErrorCode``), printed by
  the ``flwr`` CLI and by a SuperNode whose connection the SuperLink refused;
- a process exit, a log line ending ``Exit Code: N`` (``flwr.supercore.exit.ExitCode``);
- the ``flwr`` CLI's ``--format json`` answer, a JSON object after any other output.

A Flower release that changes these forms fails ``tests/deploy_flower/test_cli_output.py``
(real Flower text where it can be produced without a federation).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ApiCode",
    "ExitCode",
    "SupernodeOutput",
    "api_error_codes",
    "exit_codes",
    "flwr_json_answer",
    "has_api_code",
    "parse_supernode_output",
]


class ApiCode:
    """The API error codes fedguard acts on (``flwr.supercore.error.ApiErrorCode``)."""

    PUBLIC_KEY_ALREADY_IN_USE = 23  # `flwr supernode register`: this key is registered
    NODE_NOT_FOUND = 24  # `flwr supernode unregister`: no such node (already gone)
    FLEET_SUPERNODE_REGISTRATION_DISABLED = 2001  # node auth on: a node must have a key
    FLEET_NODE_ACTIVATION_FAILED = 2004  # key not enrolled, or its session still online


class ExitCode:
    """The exit codes fedguard acts on (``flwr.supercore.exit.ExitCode``)."""

    SUPERNODE_NODE_AUTH_KEY_INVALID = 302


_API_CODE = re.compile(r"\[code: (\d+)\]")
_EXIT_CODE = re.compile(r"Exit Code: (\d+)\s*$", re.MULTILINE)  # after the log prefix
_ACTIVATION_FAILED = "Failed to activate SuperNode"  # the public message of code 2004
_NODE_ID = "SuperNode ID:"  # logged once the SuperLink has accepted the node


def api_error_codes(text: str) -> set[int]:
    """Every ``[code: N]`` in ``text``."""
    return {int(n) for n in _API_CODE.findall(text)}


def exit_codes(text: str) -> set[int]:
    """Every ``Exit Code: N`` line in ``text``."""
    return {int(n) for n in _EXIT_CODE.findall(text)}


@dataclass(frozen=True)
class SupernodeOutput:
    """What a SuperNode's log says about how it ended."""

    accepted: bool  # the SuperLink activated the node ("SuperNode ID: N")
    activation_refused: bool  # code 2004: key not enrolled, or held online elsewhere
    auth_required: bool  # code 2001: the server authenticates nodes, this one has no key
    certificate_rejected: bool  # TLS: the server's certificate did not verify
    key_invalid: bool  # exit 302: the node's private key is not an EC key in OpenSSH form
    last_line: str  # the last non-empty line, "" if none


def parse_supernode_output(text: str) -> SupernodeOutput:
    """Read a SuperNode run's log text (its start and end are enough)."""
    codes = api_error_codes(text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return SupernodeOutput(
        accepted=_NODE_ID in text,
        activation_refused=ApiCode.FLEET_NODE_ACTIVATION_FAILED in codes
        or _ACTIVATION_FAILED in text,
        auth_required=ApiCode.FLEET_SUPERNODE_REGISTRATION_DISABLED in codes,
        certificate_rejected="CERTIFICATE_VERIFY_FAILED" in text,
        key_invalid=ExitCode.SUPERNODE_NODE_AUTH_KEY_INVALID in exit_codes(text),
        last_line=lines[-1] if lines else "",
    )


def flwr_json_answer(stdout: str, stderr: str = "") -> dict[str, Any]:
    """The JSON object ``flwr ... --format json`` printed (``success`` false on error).

    Flower may print other lines first; the answer is the object from the first ``{``.
    No object: ``{"success": False, "error-message": ...}`` with the output's tail.
    """
    try:
        answer = json.loads(stdout[stdout.index("{") :])
    except (ValueError, RecursionError):
        tail = " ".join((stdout + stderr).split())[-300:]
        return {"success": False, "error-message": f"no JSON answer: {tail}"}
    if not isinstance(answer, dict):
        return {"success": False, "error-message": stdout}
    return answer


def has_api_code(answer: dict[str, Any], code: int) -> bool:
    """Whether a ``flwr`` JSON answer's error message carries ``[code: code]``."""
    return code in api_error_codes(str(answer.get("error-message", "")))
