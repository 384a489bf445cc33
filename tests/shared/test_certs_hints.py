"""#17 point 8: `fedguard certs` says what to do next with fedguard's own commands and
config keys, not raw Flower flags."""

import contextlib
from pathlib import Path

from fedguard.cli import main as fedguard_main


def test_certs_hints_name_fedguard_commands_and_keys(tmp_path: Path, capsys):
    with contextlib.chdir(tmp_path):
        fedguard_main(["certs", "init", "--out", "certs"])
        fedguard_main(["certs", "node", "bank-a", "--out", "keys"])
    out = capsys.readouterr().out
    hints = [line for line in out.splitlines() if line.startswith("next:")]
    assert len(hints) == 2
    assert "fedguard server --config" in hints[0] and "ca-cert" in hints[0]
    assert "fedguard client --config" in hints[1] and "private-key" in hints[1]
    for flower_flag in ("--ssl-", "flower-supernode", "--auth-supernode", "SuperLink"):
        assert flower_flag not in out
