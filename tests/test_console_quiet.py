"""#17.8: option and config errors come before the heavy imports; Flower's colours, DEBUG
lines and tracebacks and Opacus's order warning stay out of fedguard's console unless
--verbose. Real `fedguard` processes; a timing is never asserted (sys.modules is)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedguard.console import FlowerLines

_PROBE = (
    "import sys, json\nfrom fedguard.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "else:\n    code = 0\n"
    "print(json.dumps([code, [m for m in ('torch', 'opacus', 'flwr') if m in sys.modules]]))\n"
)


def _probe(*args: str) -> tuple[int, list[str], str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120
    )
    code, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return code, heavy, out.stderr


@pytest.mark.parametrize(
    ("command", "toml", "key"),
    [
        ("simulate", "rounds = -3\n", "--rounds"),
        ("simulate", "epsilon = 0\n", "--epsilon"),
        ("server", '[federation]\nname = "x"\nrounds = -1\n[server]\ninsecure = true\n',
         "federation.rounds"),
        ("client", '[node]\nname = "bank-a"\ninsecure = true\n[privacy]\nmax-epsilon = -2\n',
         "privacy.max-epsilon"),
    ],
)  # fmt: skip
def test_a_bad_config_value_is_refused_before_torch_is_imported(
    tmp_path: Path, command: str, toml: str, key: str
):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    code, heavy, err = _probe(command, "--config", str(path))
    assert code == 2 and heavy == []
    assert err.startswith(f"fedguard: error: {path}: {key}: expected") and err.count("\n") == 1


def test_a_bad_option_is_refused_before_torch_is_imported():
    code, heavy, err = _probe("simulate", "--rounds", "0")
    assert (code, heavy) == (2, []) and "--rounds: expected an integer >= 1, got 0" in err
    code, heavy, err = _probe("simulate", "--bogus")
    assert (code, heavy) == (2, []) and "No such option" in err


@pytest.mark.parametrize(("option", "names"), [("--model", "logreg, mlp"), ("--partition", "iid")])
def test_a_bad_name_is_refused_before_torch_is_imported(option: str, names: str):
    # Before: the model names lived beside the models, so checking one imported torch.
    code, heavy, err = _probe("simulate", option, "nope")
    assert (code, heavy) == (2, []) and f"{option}: expected one of {names}" in err


def test_opacus_order_warning_only_with_verbose(tmp_path: Path):
    # epsilon 0.2: so much noise that the best RDP order is Opacus's largest.
    args = ["--dataset", "digits", "--rounds", "1", "--clients", "2", "--epsilon", "0.2"]

    def run(*extra: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "fedguard", "simulate", *args, *extra],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    assert "Optimal order is the largest alpha" in run("--out", "loud", "--verbose")
    assert "Optimal order" not in run("--out", "quiet")


def test_flower_lines_lose_colours_debug_and_repeated_tracebacks():
    raw = [
        "\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `1`",
        "12/04/2026 19:20:30:DEBUG:ServerApp finished running.",
        "\x1b[92mINFO \x1b[0m:",
        "12/04/2026 19:20:30:INFO:",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "AttributeError: boom",
        "",
        "During handling of the above exception, another exception occurred:",
        "Traceback (most recent call last):",
        '  File "y.py", line 2, in <module>',
        "RuntimeError: again",
        "stopped: AttributeError: boom (traceback in state/serverapp-error.log)",
    ]
    quiet = FlowerLines(raw_log="state/flwr-run.log", verbose=False)
    shown = [x for x in (quiet.feed(r) for r in raw) if x is not None]
    assert shown == [
        "INFO :      Starting logstream for run_id `1`",
        "(a Flower traceback, not shown: see state/flwr-run.log, or use --verbose)",
        "",
        "stopped: AttributeError: boom (traceback in state/serverapp-error.log)",
    ]
    loud = FlowerLines(raw_log="x", verbose=True)
    assert [loud.feed(r) for r in raw][4:7] == raw[4:7]
