"""#16 point 1: a node runs only code installed on it.

A hostile operator submits runs to a real SuperLink (TLS, node authentication) that a real
`fedguard client` node is connected to: (a) an app bundle carrying its own module, named as
the ClientApp (it would write a marker file when imported); (b) a bundle naming fedguard's
ClientApp but another task digest. The node refuses both before importing anything; the
server receives the one-line reason as the node's error reply. The hostile ServerApp is
installed on the server only (PYTHONPATH), as an operator's own code would be.
"""

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.deploy.flower import MAX_MESSAGE_FLAG, flower_env
from fedguard.deploy.procs import start, stop, venv_tool, wait_for_port
from fedguard.task_identity import installed_task

pytestmark = pytest.mark.deploy

CONNECTION = "hostile"

HOSTILE_SERVER = """
import json, time
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    out = context.run_config["config-path"]  # the one key a node accepts
    nodes = []
    for _ in range(120):
        nodes = list(grid.get_node_ids())
        if nodes:
            break
        time.sleep(0.5)
    msgs = [Message(RecordDict(), dst_node_id=n, message_type="query.describe") for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=90))
    reasons = [r.error.reason if r.has_error() else "accepted" for r in replies]
    with open(out, "w") as fh:
        json.dump({"nodes": len(nodes), "reasons": reasons}, fh)
"""

FEDGUARD_APP = {"name": "fedguard-federation", "publisher": "fedguard"}
PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "{publisher}"

[tool.flwr.app.components]
serverapp = "hostile_server:app"
clientapp = "{clientapp}"

[tool.flwr.app.config]
config-path = ""
{extra}
"""


def _flwr(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout
    while True:
        res = subprocess.run(
            [venv_tool("flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if res.returncode == 0 or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


def test_a_node_refuses_bundles_that_are_not_its_installed_app(tmp_path: Path, processes):
    layout = write_federation(out=tmp_path / "fed", nodes=2, rounds=1)
    fed = tomllib.loads(layout.federation.read_text())
    s = fed["server"]
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{s["control-port"]}"\nroot-certificates = "{s["ca-cert"]}"\n'
    )
    server_code = tmp_path / "server-code"
    server_code.mkdir()
    (server_code / "hostile_server.py").write_text(HOSTILE_SERVER)
    env = flower_env(home, {"PYTHONPATH": str(server_code)})
    log = (tmp_path / "superlink.log").open("ab")
    link = start(
        [sys.executable, "-m", "fedguard.deploy.flower", "superlink",
         MAX_MESSAGE_FLAG, str(64 * 2**20),
         "--ssl-ca-certfile", s["ca-cert"], "--ssl-certfile", s["server-cert"],
         "--ssl-keyfile", s["server-key"], "--enable-supernode-auth",
         "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
         "--port", str(s["control-port"]), "--fleet-api-type", "grpc-rere",
         "--fleet-api-address", f"127.0.0.1:{s['fleet-port']}",
         "--database", str(tmp_path / "superlink.db")],
        env=env, log=log,
    )  # fmt: skip
    log.close()
    processes.started.append(link)
    wait_for_port("127.0.0.1", s["control-port"], timeout=90, alive=link)
    node_a = layout.nodes[0]
    res = _flwr(
        env, "supernode", "register", str(node_a.parent / "keys" / "node-a.pub"), CONNECTION
    )
    assert res.returncode == 0, res.stdout + res.stderr
    processes.client(node_a)
    marker = tmp_path / "pwned"
    mine = installed_task()
    cases = {
        "own module": (
            PYPROJECT.format(clientapp="evil_client:app", extra="", **FEDGUARD_APP),
            {"evil_client.py": f"open({str(marker)!r}, 'w').write('imported')\napp = None\n"},
            "carries files of its own (evil_client.py)",
        ),
        "other task digest": (
            PYPROJECT.format(
                **FEDGUARD_APP,
                clientapp="fedguard.client.app:app",
                extra=(
                    f'[tool.fedguard]\ntask = "{mine.name}"\ntask-version = "{mine.version}"\n'
                    f'task-digest = "sha256:{"0" * 64}"\n'
                ),
            ),
            {},
            "its task-digest is 'sha256:000",
        ),
        # Flower installs under apps/<publisher>.<name>.<version>: another app's folder
        "another app": (
            PYPROJECT.format(
                name="hostile",
                publisher="someone",
                clientapp="fedguard.client.app:app",
                extra=(
                    f'[tool.fedguard]\ntask = "{mine.name}"\ntask-version = "{mine.version}"\n'
                    f'task-digest = "{mine.digest}"\n'
                ),
            ),
            {},
            "its app publisher is 'someone'",
        ),
    }
    for name, (pyproject, files, expected) in cases.items():
        app = tmp_path / name.replace(" ", "-")
        app.mkdir()
        (app / "pyproject.toml").write_text(pyproject)
        for file, text in files.items():
            (app / file).write_text(text)
        out = tmp_path / f"{app.name}.json"
        with (tmp_path / f"{app.name}.log").open("ab") as run_log:
            run = start(
                [venv_tool("flwr"), "run", str(app), CONNECTION, "--stream",
                 "-c", f'config-path="{out}"'],
                env=env, log=run_log,
            )  # fmt: skip
        try:
            run.wait(timeout=240)
        finally:
            stop(run)
        assert out.exists(), (tmp_path / f"{app.name}.log").read_text()[-2000:]
        result = json.loads(out.read_text())
        assert result["nodes"] == 1 and len(result["reasons"]) == 1, result
        reason = result["reasons"][0]
        assert "refused before anything of it was imported" in reason, reason
        assert expected in reason, reason
        assert "\n" not in reason
    assert not marker.exists(), "the bundle's own code ran on the node"
    supernode_log = (node_a.parent / "state" / "supernode.log").read_text(errors="replace")
    assert supernode_log.count("refused before anything of it was imported") >= 2
