"""fedguard.deploy.procs.fork_start: a forked child behaves like a started one (session, log,
environment, exit status, stop), minus the imports."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedguard.deploy.procs import ForkedProcess, fork_start, stop


def _report(path: Path, code: object = None) -> None:
    path.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "sid": os.getsid(0),
                "env": os.environ.get("FORK_TEST"),
                "root_handlers": len(logging.root.handlers),
                "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            }
        )
    )
    print("to the log", flush=True)
    if code is not None:
        sys.exit(code)


@pytest.mark.parametrize(("code", "expected"), [(None, 0), (0, 0), (7, 7), ("a reason", 1)])
def test_forked_child_runs_main_in_its_own_session_and_reports_its_status(tmp_path, code, expected):
    report, log_path = tmp_path / "child.json", tmp_path / "child.log"
    # The parent's logging and signal handlers are not the child's.
    logging.root.addHandler(handler := logging.NullHandler())
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with log_path.open("ab") as log:
            proc = fork_start(
                lambda argv: _report(Path(argv[0]), code),
                [str(report)],
                env={"FORK_TEST": "yes", "PATH": os.environ.get("PATH", "")},
                log=log,
            )
        assert isinstance(proc, ForkedProcess)
        assert proc.wait(timeout=30) == expected
    finally:
        logging.root.removeHandler(handler)
        signal.signal(signal.SIGTERM, previous)
    child = json.loads(report.read_text())
    assert child["pid"] == proc.pid == child["sid"] != os.getpid()  # a new session
    assert child["env"] == "yes" and os.environ.get("FORK_TEST") is None
    assert child["root_handlers"] == 0 and child["sigterm_default"]
    text = log_path.read_text()
    assert "to the log" in text
    assert ("a reason" in text) == (code == "a reason")  # as the interpreter prints it


def test_a_forked_child_that_raises_exits_1_with_its_traceback_in_the_log(tmp_path):
    def main(_argv: list[str]) -> None:
        raise RuntimeError("boom")

    with (tmp_path / "log").open("ab") as log:
        proc = fork_start(main, [], env=dict(os.environ), log=log)
    assert proc.wait(timeout=30) == 1
    assert "RuntimeError: boom" in (tmp_path / "log").read_text()


def test_stop_ends_a_forked_child_and_wait_times_out_while_it_runs(tmp_path):
    with (tmp_path / "log").open("ab") as log:
        proc = fork_start(lambda _argv: time.sleep(60), [], env=dict(os.environ), log=log)
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    t = time.monotonic()
    stop(proc, grace=5)
    assert time.monotonic() - t < 5  # SIGTERM's default action ends it at once
    assert proc.returncode == -signal.SIGTERM
    assert proc.poll() == -signal.SIGTERM
