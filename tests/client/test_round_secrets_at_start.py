"""#15 point 7: a node killed during secure aggregation left its round's SecAgg secrets
and its unmasked update in its state folder until its next round; `fedguard client`
removes them when it starts (the journal of what was sent stays)."""

from pathlib import Path

from fedguard.client.launcher import _remove_round_secrets
from fedguard.files import RELEASED_FILE, SESSION_FILE, UPDATE_FILE


def test_an_interrupted_rounds_secrets_are_removed_at_start(tmp_path: Path, capsys):
    for name in (SESSION_FILE, UPDATE_FILE, RELEASED_FILE):
        (tmp_path / name).write_bytes(b"left by a killed node")
    _remove_round_secrets(tmp_path, name="bank-a")
    assert not (tmp_path / SESSION_FILE).exists() and not (tmp_path / UPDATE_FILE).exists()
    assert (tmp_path / RELEASED_FILE).exists()  # what was sent: needed against a second sum
    out = capsys.readouterr().out
    assert out.count("node bank-a: removed") == 2
    _remove_round_secrets(tmp_path, name="bank-a")  # nothing left: nothing said
    assert capsys.readouterr().out == ""
