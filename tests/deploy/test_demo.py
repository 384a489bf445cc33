"""`fedguard demo`, the product command, on its own (#20.6): tests no longer borrow its files
(they write theirs with tests/harness), so the demo is checked here, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedguard.deploy.demo import EPSILON, MARKER, prepare_demo
from fedguard.errors import ConfigError


def test_the_demo_writes_a_federation_and_replaces_only_its_own_folder(tmp_path: Path):
    layout = prepare_demo(out=tmp_path / "demo", nodes=2, rounds=1)
    assert (layout.root / MARKER).is_file()
    assert [t.parent.name for t in layout.nodes] == ["node-a", "node-b"]
    assert sorted(p.name for p in (layout.root / "enrolled").iterdir()) == [
        "node-a.pub",
        "node-b.pub",
    ]
    (layout.root / "node-a" / "stale.txt").write_text("from the last demo")
    again = prepare_demo(out=tmp_path / "demo", nodes=3, rounds=1)  # an earlier demo: replaced
    assert len(again.nodes) == 3 and not (layout.root / "node-a" / "stale.txt").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("not the demo's")
    with pytest.raises(ConfigError, match=r"--out: expected a new folder or an earlier demo's"):
        prepare_demo(out=other, nodes=2, rounds=1)
    assert (other / "thesis.tex").read_text() == "not the demo's"
    with pytest.raises(ConfigError, match=r"--nodes: expected an integer >= 2 .* got 1"):
        prepare_demo(out=tmp_path / "one", nodes=1, rounds=1)


@pytest.mark.deploy
def test_fedguard_demo_runs_a_round_and_reports_every_nodes_epsilon(tmp_path: Path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "fedguard", "demo", "--out", str(out), "--nodes", "2",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    spent = dict(re.findall(r"^(node-[ab]): epsilon ([0-9.]+) at delta", run.stdout, re.M))
    assert sorted(spent) == ["node-a", "node-b"], run.stdout[-3000:]
    assert all(0 < float(e) <= EPSILON for e in spent.values()), spent
    assert (out / "server" / "results").is_dir()
