"""What ``fedguard client`` tells its operator while the node waits and serves (#17.2).

- Before the SuperNode starts: a server that does not answer yet is waited for, one
  visible line per attempt ("server at HOST:PORT not reachable; retrying in Ns"), the
  wait doubling up to a minute (a node may be started before its server).
- While it serves: the lines the node's ClientApps append to ``node-events.log``
  (:mod:`fedguard.client.events`) are relayed to the console, and the server is probed
  every few seconds. A server that stops answering is said, with its back-off. The node
  learns that its federation finished from two facts, never from a timeout alone: it
  trained the last round its run planned (its own record, in this session), and the
  server then closed its port (``fedguard server`` stops its SuperLink when a run ends).
  A server gone before the run's last round is waited for (it may resume the run).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fedguard.client.events import append_event, finished_run, follow
from fedguard.files import EVENTS_FILE

__all__ = ["ServeWatch", "server_reachable", "wait_for_server"]

FIRST_DELAY_S, MAX_DELAY_S = 2.0, 60.0
PROBE_EVERY_S = 5.0
_RELAY_EVERY_S = 0.5


def server_reachable(server: str, *, timeout: float = 3.0) -> bool:
    """Whether anything accepts a TCP connection at ``server`` (HOST:PORT)."""
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _say(state_dir: Path, name: str, message: str) -> None:
    print(f"node {name}: {message}", flush=True)
    append_event(state_dir, message, source="launcher")


def wait_for_server(
    *,
    server: str,
    state_dir: Path,
    name: str,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once ``server`` accepts connections; one line per failed attempt."""
    delay = FIRST_DELAY_S
    while not server_reachable(server):
        _say(state_dir, name, f"server at {server} not reachable; retrying in {delay:.0f}s")
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)


class ServeWatch(threading.Thread):
    """Relays the node's event lines and watches its server while the SuperNode runs;
    calls ``on_finished`` (then stops) once the federation has finished."""

    def __init__(
        self,
        *,
        server: str,
        state_dir: Path,
        name: str,
        on_finished: Callable[[], None],
        history: list[str],
        raw_log: Path | None = None,
    ) -> None:
        super().__init__(name="fedguard-node-watch", daemon=True)
        self.server, self.state_dir, self.node = server, state_dir, name
        self.on_finished = on_finished
        self.finished: str | None = None  # the run whose end was seen
        self._halt = threading.Event()
        path = state_dir / EVENTS_FILE
        # Only this session's lines count: a run finished before it says nothing now.
        self._offset = path.stat().st_size if path.exists() else 0
        self._raw_log = raw_log  # --verbose: the SuperNode's own output is shown too
        self._raw_offset = raw_log.stat().st_size if raw_log and raw_log.exists() else 0
        self._seen = history  # shared by the sessions of one `fedguard client`

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self._relay()

    def _relay(self) -> None:
        if self._raw_log is not None:
            raw, self._raw_offset = follow(self._raw_log, self._raw_offset)
            for line in raw:
                print(f"node {self.node} (flower): {line}", flush=True)
        lines, self._offset = follow(self.state_dir / EVENTS_FILE, self._offset)
        for line in lines:
            stamp, _, rest = line.partition(" ")
            source, _, message = rest.partition(": ")
            if source == "launcher":  # printed already by this process
                continue
            self._seen.append(message)
            print(f"{stamp} node {self.node}: {message}", flush=True)

    def run(self) -> None:
        delay, next_probe, down = PROBE_EVERY_S, time.monotonic() + PROBE_EVERY_S, False
        while not self._halt.wait(_RELAY_EVERY_S):
            self._relay()
            if time.monotonic() < next_probe:
                continue
            wait = PROBE_EVERY_S
            if server_reachable(self.server):
                if down:
                    _say(self.state_dir, self.node, f"server at {self.server} reachable again")
                delay, down = PROBE_EVERY_S, False
            else:
                self._relay()  # the last round's line may have come meanwhile
                run = finished_run(self._seen)
                if run is not None:
                    self.finished = run
                    _say(
                        self.state_dir,
                        self.node,
                        f"federation finished: this node trained the last planned round of "
                        f"run '{run}' and the server at {self.server} has closed; exiting",
                    )
                    self.on_finished()
                    return
                wait, delay, down = delay, min(delay * 2, MAX_DELAY_S), True
                _say(
                    self.state_dir,
                    self.node,
                    f"server at {self.server} not reachable; retrying in {wait:.0f}s",
                )
            next_probe = time.monotonic() + wait
