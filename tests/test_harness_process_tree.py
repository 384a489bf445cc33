"""The deploy tests' teardown leaves no process behind, however deep it was started.

The shape of a `fedguard server`: the launcher (own session) starts a SuperLink in a
session of its own that dies with its parent, and the SuperLink starts a ServerApp process
with no such tie. Stopping the launcher's group the way `fedguard.deploy.procs.stop` does
left that grandchild running; the deploy fixture's teardown must not.
"""

import os
import sys
import time
from pathlib import Path

from harness.process_tree import tree

from fedguard.deploy.procs import start, stop

# The launcher: starts the "SuperLink" with fedguard's own start() (new session, dies
# with its parent), which starts the "ServerApp" with a plain Popen; prints its PID.
_LAUNCHER = """
import subprocess, sys, time
from fedguard.deploy.procs import start
link = start([sys.executable, "-c", '''
import subprocess, sys, time
app = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(app.pid, flush=True)
time.sleep(120)
'''], env={"PATH": ""}, log=None)
time.sleep(120)
"""


def _start_server_shape(tmp_path: Path):
    out = tmp_path / "app.pid"
    with out.open("wb") as log:
        launcher = start([sys.executable, "-c", _LAUNCHER], env=dict(os.environ), log=log)
    deadline = time.monotonic() + 60
    while not out.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    return launcher, int(out.read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_stopping_the_launchers_group_leaves_the_grandchild_running(tmp_path: Path):
    launcher, app = _start_server_shape(tmp_path)
    try:
        assert app in [pid for pid, _ in tree(launcher.pid)]
        stop(launcher, grace=1)
        assert not _wait_gone(app, timeout=3), "the grandchild died with the group"
    finally:
        os.kill(app, 9)


def test_the_deploy_fixture_stops_every_descendant(tmp_path: Path):
    from deploy.conftest import Processes

    launcher, app = _start_server_shape(tmp_path)
    procs = Processes()
    procs.started.append(launcher)
    try:
        procs.stop_all()
        assert _wait_gone(app), "the ServerApp-like grandchild outlived the teardown"
    finally:
        if _alive(app):
            os.kill(app, 9)
