"""Real processes for the deployment tests; every one is stopped by PID, pass or fail."""

import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.federation_files import FederationFiles, fedguard_cmd
from harness.process_tree import kill_leftovers, tree
from harness.processes import relay_output

from fedguard.deploy.procs import start, stop


class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def server(
        self, layout: FederationFiles, *, expect: list[str]
    ) -> tuple[subprocess.Popen[bytes], threading.Event]:
        proc = start(
            fedguard_cmd("server", "--config", str(layout.federation)),
            env=dict(os.environ),
            log=subprocess.PIPE,
        )
        self.started.append(proc)
        return proc, relay_output(proc, expect=expect)

    def client(self, toml: Path) -> subprocess.Popen[bytes]:
        log = (toml.parent / "client.log").open("ab")
        proc = start(fedguard_cmd("client", "--config", str(toml)), env=dict(os.environ), log=log)
        log.close()  # the child holds its own copy
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        # Every descendant first (harness/process_tree.py says why), then all at once: a
        # node whose server is gone can take its whole grace period.
        descendants = [p for proc in self.started for p in tree(proc.pid)]
        with ThreadPoolExecutor(max_workers=max(1, len(self.started))) as pool:
            list(pool.map(stop, reversed(self.started)))
        kill_leftovers(descendants)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()
