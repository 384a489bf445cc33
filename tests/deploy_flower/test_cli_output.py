"""fedguard.deploy.flower.cli_output: Flower's own text read by its codes, never by numbers.

The SuperNode's and the CLI's messages are produced by the real Flower functions that
print them (``_format_connection_error``, ``flwr_exit``); the attacks are log lines that
merely contain the digits of a code (a node id, a port), which the launcher used to read
as that error.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from flwr.client.grpc_rere_client.connection import _format_connection_error
from flwr.supercore.error.base import ApiErrorCode, FlowerError
from flwr.supercore.error.catalog import API_ERROR_MAP
from flwr.supercore.exit import ExitCode as FlowerExitCode

from fedguard.client import launcher
from fedguard.deploy.flower.cli_output import (
    ApiCode,
    ExitCode,
    api_error_codes,
    exit_codes,
    flwr_json_answer,
    has_api_code,
    parse_supernode_output,
)


class _RpcError(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details


def _supernode_refused(code: int) -> str:
    """What Flower's SuperNode logs when the SuperLink refuses its connection with ``code``."""
    error = FlowerError(code, "server-side detail")
    payload = json.dumps(error.to_json(API_ERROR_MAP[code].public_message))
    return _format_connection_error(_RpcError(payload))


def _exit_output(code: int) -> str:
    """What a Flower process prints when it exits with ``code`` (a real ``flwr_exit``)."""
    run = subprocess.run(
        [sys.executable, "-c", f"from flwr.supercore.exit import flwr_exit; flwr_exit({code})"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    return run.stdout + run.stderr


_CFG = SimpleNamespace(node=SimpleNamespace(private_key=Path("/keys/n1")))


def test_fedguards_codes_are_flowers():
    assert ApiCode.PUBLIC_KEY_ALREADY_IN_USE == ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE
    assert ApiCode.NODE_NOT_FOUND == ApiErrorCode.NODE_NOT_FOUND
    assert (
        ApiCode.FLEET_SUPERNODE_REGISTRATION_DISABLED
        == ApiErrorCode.FLEET_SUPERNODE_REGISTRATION_DISABLED
    )
    assert ApiCode.FLEET_NODE_ACTIVATION_FAILED == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED
    assert (
        ExitCode.SUPERNODE_NODE_AUTH_KEY_INVALID == FlowerExitCode.SUPERNODE_NODE_AUTH_KEY_INVALID
    )


def test_flowers_refusals_are_recognised():
    refused = parse_supernode_output(_supernode_refused(ApiCode.FLEET_NODE_ACTIVATION_FAILED))
    assert refused.activation_refused and not refused.auth_required
    keyless = parse_supernode_output(
        _supernode_refused(ApiCode.FLEET_SUPERNODE_REGISTRATION_DISABLED)
    )
    assert keyless.auth_required and not keyless.activation_refused
    assert "requires node authentication" in launcher._explain(
        _supernode_refused(ApiCode.FLEET_SUPERNODE_REGISTRATION_DISABLED), _CFG
    )
    bad_key = _exit_output(ExitCode.SUPERNODE_NODE_AUTH_KEY_INVALID)
    assert exit_codes(bad_key) == {ExitCode.SUPERNODE_NODE_AUTH_KEY_INVALID}
    assert "is not an EC key" in launcher._explain(bad_key, _CFG)


@pytest.mark.parametrize(
    "line",
    [
        "INFO :      SuperNode ID: 7120011342",  # a node id holding 2001, 2004 and 302
        "INFO :      Starting Flower SuperNode on 127.0.0.1:12004",
        "ERROR :     Exit Code: 305",  # another exit: the URL below holds the digits
        "For more information, visit: <https://flower.ai/ref-exit-codes/305.html#302-2001>",
        "connection reset after 3020 ms",
    ],
)
def test_digits_of_a_code_are_not_that_error(line):
    output = f"INFO :      Starting Flower SuperNode\n{line}\nfinal line\n"
    said = parse_supernode_output(output)
    assert not (said.activation_refused or said.auth_required or said.key_invalid)
    assert not launcher._activation_refused(output)  # it would wait 35 s and retry
    assert launcher._explain(output, _CFG) == "the SuperNode stopped: final line"


def test_api_codes_and_json_answers():
    text = "[code: 23] Public key already in use. [code: 24] Node ID not found"
    assert api_error_codes(text) == {23, 24}
    assert api_error_codes("node 23 and 24") == set()
    answer = flwr_json_answer('Loading...\n{"success": false, "error-message": "[code: 24] x"}')
    assert has_api_code(answer, ApiCode.NODE_NOT_FOUND)
    assert not has_api_code(answer, ApiCode.PUBLIC_KEY_ALREADY_IN_USE)
    assert not has_api_code({"error-message": "node 24 gone"}, ApiCode.NODE_NOT_FOUND)
    missing = flwr_json_answer("no json here", "Traceback: boom")
    assert missing["success"] is False and "boom" in missing["error-message"]
    assert flwr_json_answer("[1, 2]")["success"] is False
