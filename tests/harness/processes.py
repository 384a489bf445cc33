"""Watching a real process's output in a test."""

from __future__ import annotations

import subprocess
import threading

__all__ = ["relay_output"]


def relay_output(proc: subprocess.Popen[bytes], *, expect: list[str]) -> threading.Event:
    """Print ``proc``'s output as it comes (pytest shows it on failure); the event is set
    once every line in ``expect`` has been seen (each as the start of a line, up to " (")."""
    seen = threading.Event()
    missing = set(expect)

    def pump() -> None:
        for raw in proc.stdout or ():
            line = raw.decode(errors="replace").rstrip()
            print(line, flush=True)
            missing.discard(line.split(" (")[0])
            if not missing:
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    return seen
