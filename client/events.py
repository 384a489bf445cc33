"""The node's own account of what it does, one line per event (#17.2).

Flower may run each message in a fresh ClientApp process whose output lands in the
SuperNode's log, so the ClientApp never prints to the operator: it appends whole lines to
``node-events.log`` in the node's state folder (0600), and ``fedguard client`` relays
them to its console as they come (:func:`follow`). One ``os.write`` per line on an
``O_APPEND`` descriptor: lines from concurrent processes never interleave mid-line.
It does not import Flower nor torch.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

from fedguard.files import EVENTS_FILE

__all__ = ["EVENTS_FILE", "RUN_DONE", "append_event", "finished_run", "follow"]

# Written after the node trained the last round its run planned: with the server gone
# afterwards, the launcher may say the federation finished (client/launcher.py).
RUN_DONE = "trained the last planned round of run"
_RUN_DONE = re.compile(re.escape(RUN_DONE) + r" '([^']*)'")
_MAX_LINE = 2000  # one event; a longer reason is cut, never split over lines


def append_event(state_dir: Path, message: str, *, source: str = "node") -> None:
    """Append ``message`` as one timestamped line; an unwritable log is not an error of
    the round (the line is lost, the round goes on)."""
    text = " ".join(message.split())[:_MAX_LINE]
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    line = f"{stamp} {source}: {text}\n".encode()
    try:
        fd = os.open(state_dir / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


def follow(path: Path, offset: int) -> tuple[list[str], int]:
    """The whole lines written to ``path`` after ``offset``, and the new offset (a line
    still being written stays for the next call)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode(errors="replace").splitlines()
    return lines, offset + end


def finished_run(lines: list[str]) -> str | None:
    """The run whose last planned round the newest round line says was trained, or None
    if the newest round line says anything else."""
    for line in reversed(lines):
        if " round " not in line:
            continue
        match = _RUN_DONE.search(line)
        return match[1] if match else None
    return None
