"""#15 point 4: nothing unauthenticated costs the SuperLink memory.

The attack: with no key at all, an oversized ``PushMessages`` call to the Fleet API. Flower
accepts messages up to 2 GiB and checks authentication only once a message is in memory
(three concurrent 512 MB calls took a SuperLink from 387 MB to a 2.3 GB peak). With
fedguard's cap gRPC refuses the message from its length prefix: RESOURCE_EXHAUSTED, and
the SuperLink's memory does not grow by the message's size.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedguard.deploy.flower import MAX_MESSAGE_FLAG, flower_env
from fedguard.deploy.procs import free_port, start, stop, wait_for_port

pytestmark = pytest.mark.deploy

CAP = 4 * 2**20
ATTACK = 96 * 2**20


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    fleet, control, runtime = free_port(), free_port(), free_port()
    home = tmp_path / "flwr"
    home.mkdir()
    args = [
        sys.executable, "-m", "fedguard.deploy.flower", "superlink", MAX_MESSAGE_FLAG, str(CAP),
        "--insecure", "--host", "127.0.0.1", "--port", str(runtime),
        "--fleet-api-type", "grpc-rere", "--fleet-api-address", f"127.0.0.1:{fleet}",
        "--control-api-address", f"127.0.0.1:{control}",
        "--database", str(tmp_path / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    log = (tmp_path / "superlink.log").open("ab")
    proc = start(args, env=flower_env(home, {"FLWR_LOG_LEVEL": "INFO"}), log=log)
    log.close()
    try:
        wait_for_port("127.0.0.1", fleet, timeout=90, alive=proc)
        yield proc, fleet
    finally:
        stop(proc)


def test_an_oversized_unauthenticated_push_is_refused_before_it_is_read(superlink):
    proc, fleet = superlink
    before = _rss_kb(proc.pid)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{fleet}", options=[("grpc.max_send_message_length", -1)]
    )
    push = channel.unary_unary(
        "/flwr.proto.Fleet/PushMessages",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    # A protobuf bytes field (tag 1, wire type 2) of ATTACK bytes: a well-formed message.
    size = ATTACK
    varint = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            break
    payload = b"\x0a" + bytes(varint) + os.urandom(1024) * (ATTACK // 1024)
    with pytest.raises(grpc.RpcError) as err:
        push(payload, timeout=60)
    channel.close()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    grew_mb = (_rss_kb(proc.pid) - before) / 1024
    assert grew_mb < ATTACK / 2**20 / 2, f"SuperLink peak grew by {grew_mb:.0f} MB"
    assert proc.poll() is None  # still serving


def test_the_cap_fits_the_largest_reply_of_the_model_and_no_more():
    from fedguard.deploy_config import load_federation_config
    from fedguard.server.launcher import fleet_message_cap

    def cap(model: str, shape: str, classes: int, tmp: Path) -> int:
        toml = tmp / f"{model}.toml"
        toml.write_text(
            f'[task]\nmodel = "{model}"\ninput-shape = {shape}\nnum-classes = {classes}\n'
            "[server]\ninsecure = true\n"
        )
        return fleet_message_cap(load_federation_config(toml))

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        small = cap("logreg", "[1, 8, 8]", 10, Path(tmp))  # 650 parameters
        big = cap("mlp", "[784]", 10, Path(tmp))
    assert 16 * 2**20 < small < 17 * 2**20
    assert big - small > 3 * 8 * 50_000  # grows with the model: 64-bit masks, 3x
    assert big < 2**31 // 100  # far below Flower's 2 GiB


def test_a_model_that_does_not_fit_the_shape_is_named_by_its_federation_toml_key(tmp_path):
    """A federation.toml typo is reported as ``federation.toml: task.model``, not as the
    simulate command's ``--model`` option the operator never typed."""
    from fedguard.deploy_config import load_federation_config
    from fedguard.errors import ConfigError
    from fedguard.server.launcher import fleet_message_cap

    toml = tmp_path / "federation.toml"
    toml.write_text(
        '[task]\nmodel = "cnn"\ninput-shape = [30]\nnum-classes = 2\n[server]\ninsecure = true\n'
    )
    with pytest.raises(ConfigError) as err:
        fleet_message_cap(load_federation_config(toml))
    assert f"{toml.resolve()}: task.model: expected" in str(err.value)
    assert "--model" not in str(err.value)
