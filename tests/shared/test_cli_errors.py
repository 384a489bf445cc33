"""#15 point 5: no secret in any traceback. An unexpected error is one line plus the path of
a private log holding the traceback, never the frames' local variables or the environment
(Typer's pretty tracebacks printed both: a planted SECRET_TOKEN appeared on the console)."""

import os
import re
import subprocess
import sys
from pathlib import Path

SECRET = "hunter2-planted-secret"

SCRIPT = """
import os
import fedguard.cli as cli

@cli.app.command("boom")
def boom() -> None:
    environment = dict(os.environ)  # a local holding the secret, as a real frame would
    config = {"token": environment["SECRET_TOKEN"]}
    raise RuntimeError("port 9092 is already in use")

cli.main(["boom"])
"""


def test_an_unexpected_error_is_one_line_with_a_log_and_no_secret(tmp_path: Path):
    env = {**os.environ, "SECRET_TOKEN": SECRET, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert SECRET not in out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "RuntimeError: port 9092 is already in use" in lines[0]
    match = re.search(r"details: (\S+\.log)\)", lines[0])
    assert match, lines[0]
    log = Path(match.group(1))
    assert log.parent == tmp_path and (log.stat().st_mode & 0o777) == 0o600
    text = log.read_text()
    assert "Traceback" in text and "port 9092" in text and SECRET not in text
