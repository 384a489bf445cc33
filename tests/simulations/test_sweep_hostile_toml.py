"""A hostile sweep file through ``fedguard sweep``: one line and exit 2, never a traceback.

The sweep reader once parsed with ``tomllib`` directly, bypassing the hardened reader
(:func:`fedguard._toml.read_toml`): deep nesting raised ``RecursionError`` out of the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedguard.cli import main


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("x = " + "[" * 10_000 + "]" * 10_000 + "\n", "not valid TOML"),
        ("seed = " + "9" * 5000 + "\n", "not valid TOML"),
        ("seed = 99999999999999999999\n", "outside the range TOML allows"),
    ],
    ids=["nested-10000-deep", "5000-digit-integer", "int-over-64-bits"],
)
def test_hostile_sweep_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(f"fedguard: error: {config}: ") and says in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]


def test_sweep_file_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sweep.toml"
    config.write_bytes(b'partition = "\xff\xfe"\n')
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and str(config) in err
