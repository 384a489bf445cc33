"""#17 point 7: several nodes on one host. A node.toml without `port` gets a free port; a
taken one is named in one line with what holds it (Flower said only "SuperNode Runtime
HTTP API failed to start", the cause in supernode.log)."""

import os
import socket

import pytest

from fedguard.client.launcher import NodeRefusedError, _runtime_port


def test_no_port_given_means_a_free_one():
    a, b = _runtime_port(None, name="a"), _runtime_port(None, name="b")
    for port in (a, b):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_named_with_its_holder():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(NodeRefusedError) as err:
            _runtime_port(port, name="bank-b")
    text = str(err.value)
    assert f"node.port {port} is already in use by PID {os.getpid()}" in text
    assert "\n" not in text and "bank-b" in text
