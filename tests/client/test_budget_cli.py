"""`fedguard budget --config node.toml` (#17.3): per data set, spent and left under
max-epsilon, per run, from the node's real ledger; fast (no torch/opacus/flwr import)."""

import json
import subprocess
import sys
from pathlib import Path

from fedguard.files import LEDGER_FILE
from fedguard.privacy.ledger import Ledger


def _node(tmp_path: Path) -> Path:
    toml = tmp_path / "node.toml"
    toml.write_text(
        '[node]\nname = "bank-a"\nstate-dir = "state"\ninsecure = true\n'
        "[privacy]\nmax-epsilon = 4.0\ndelta = 1e-5\n"
    )
    return toml


def _round(ledger: Ledger, run: str, rnd: int, eps: float, fp: str = "hmac:aaaa"):
    entry = ledger.begin(
        run=run, server_round=rnd, dataset_fingerprint=fp, sample_rate=0.1,
        noise_multiplier=1.1, steps=10, max_grad_norm=1.0, epsilon_after=eps,
        delta=1e-5, accountant="rdp",
    )  # fmt: skip
    ledger.commit(entry)
    return entry


def _fedguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedguard", *args], capture_output=True, text=True, timeout=60
    )


def _write_ledger(tmp_path: Path) -> Ledger:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ledger = Ledger(path=state / LEDGER_FILE)
    _round(ledger, "run-1", 1, 0.8)
    _round(ledger, "run-1", 2, 1.2)
    _round(ledger, "run-2", 1, 1.9)
    ledger.void(_round(ledger, "run-2", 2, 2.6))  # never released: given back
    ledger.begin(  # interrupted: counted as spent
        run="run-2", server_round=3, dataset_fingerprint="hmac:aaaa", sample_rate=0.1,
        noise_multiplier=1.1, steps=10, max_grad_norm=1.0, epsilon_after=2.3,
        delta=1e-5, accountant="rdp",
    )  # fmt: skip
    _round(ledger, "run-3", 1, 0.5, fp="hmac:bbbb")
    return ledger


def test_budget_per_data_set_and_run_without_heavy_imports(tmp_path: Path):
    _write_ledger(tmp_path)
    toml = _node(tmp_path)
    probe = (
        "import sys, json; from fedguard.cli import main\n"
        "try:\n    main(['budget', '--config', sys.argv[1], '--json'])\n"
        "finally:\n"
        "    print(json.dumps([m for m in ('torch', 'opacus', 'flwr') if m in sys.modules]),"
        " file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(toml)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stderr.strip().splitlines()[-1]) == []
    b = json.loads(out.stdout)
    assert b["node"] == "bank-a" and b["max_epsilon"] == 4.0
    a, bb = b["datasets"]
    assert (a["fingerprint"], a["spent"], a["left"]) == ("hmac:aaaa", 2.3, 4.0 - 2.3)
    assert (a["delta"], a["accountant"]) == ([1e-5], ["rdp"])
    runs = {r["run"]: r for r in a["runs"]}
    assert (runs["run-1"]["released"], runs["run-1"]["epsilon_after"]) == (2, 1.2)
    r2 = runs["run-2"]
    assert (r2["released"], r2["pending"], r2["void"], r2["epsilon_after"]) == (1, 1, 1, 2.3)
    assert (bb["fingerprint"], bb["spent"], bb["left"]) == ("hmac:bbbb", 0.5, 3.5)

    text = _fedguard("budget", "--config", str(toml))
    assert text.returncode == 0, text.stderr
    assert "data set hmac:aaaa: epsilon spent 2.3, left 1.7 of 4 (delta 1e-05, accountant rdp)" in (
        text.stdout
    )
    assert "run run-2: rounds 1-3, 1 released, 1 interrupted (counted), 1 void" in text.stdout


def test_budget_refuses_an_edited_ledger(tmp_path: Path):
    """A ledger edited to show less spent is named, not reported as a small figure."""
    ledger = _write_ledger(tmp_path)
    data = ledger.path.read_text().replace('"epsilon_after":2.3', '"epsilon_after":0.1')
    assert data != ledger.path.read_text()
    ledger.path.write_text(data)
    out = _fedguard("budget", "--config", str(_node(tmp_path)))
    assert out.returncode == 2
    assert out.stderr.startswith("fedguard: error: ") and str(ledger.path) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_budget_of_a_node_that_never_trained(tmp_path: Path):
    out = _fedguard("budget", "--config", str(_node(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert "no round recorded: nothing spent" in out.stdout


def test_a_budget_spent_to_the_cap_leaves_nothing_not_a_rounding_error(tmp_path: Path):
    # Seen in the bank walk-through: a run calibrated to exactly max-epsilon printed
    # "left 1.332e-15 of 3".
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    _round(Ledger(path=state / LEDGER_FILE), "run-1", 1, 4.0 - 1.3e-15)
    out = _fedguard("budget", "--config", str(_node(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert "left 0 of 4" in out.stdout, out.stdout
