"""A deployed binary task with a rare positive class (#17.5), as an operator runs it: the
server's console and summary.json lead with ROC-AUC, PR-AUC and the positive class's F1
and threshold (chosen on the server's own evaluation file), and [training] class-weights
travel to the nodes, which accept them (a node that did not know the key would refuse
every round; what the weights do to training is tested in simulation, through the same
LocalTrainer). Real server, real nodes, TLS, secure aggregation.
"""

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from harness.federation_files import fedguard_cmd, write_federation
from sklearn.datasets import make_classification

from fedguard.deploy.procs import start

pytestmark = pytest.mark.deploy

ROUNDS = 2


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(f"x{i}" for i in range(x.shape[1])), "label"])
        w.writerows([*np.round(r, 5), int(t)] for r, t in zip(x, y, strict=True))


def test_binary_federation_reports_rare_class_figures(tmp_path: Path, processes) -> None:
    x, y = make_classification(
        n_samples=3000, n_features=8, n_informative=4, weights=[0.95], flip_y=0, random_state=2
    )
    layout = write_federation(out=tmp_path / "fed", nodes=2, rounds=ROUNDS)
    server_csv = tmp_path / "server-eval.csv"
    _write_csv(server_csv, x[:1000], y[:1000])
    fed = layout.federation.read_text()
    fed = fed.replace("input-shape = [1, 8, 8]", "input-shape = [8]")
    fed = fed.replace("num-classes = 10", "num-classes = 2")
    fed = fed.replace(
        'eval-dataset = "digits"', f'eval-dataset = "{server_csv}"\neval-target = "label"'
    )
    fed = fed.replace("[training]\n", "[training]\nclass-weights = [0.1, 1.0]\n")
    layout.federation.write_text(fed)
    for i, toml in enumerate(layout.nodes):
        rows = slice(1000 + 1000 * i, 2000 + 1000 * i)
        node_csv = toml.parent / "bank.csv"
        _write_csv(node_csv, x[rows], y[rows])
        text = re.sub(
            r'dataset = "digits"\npartition-id = \d+\nnum-partitions = \d+',
            f'dataset = "{node_csv}"\ntarget = "label"',
            toml.read_text(),
        )
        toml.write_text(text)
    nodes = [processes.client(toml) for toml in layout.nodes]
    server = start(
        fedguard_cmd("server", "--config", str(layout.federation)),
        env=dict(os.environ),
        log=subprocess.PIPE,
    )
    processes.started.append(server)
    console, _ = server.communicate(timeout=400)
    shown = console.decode(errors="replace")
    assert server.returncode == 0, shown[-3000:]
    for r in range(1, ROUNDS + 1):  # each round's line leads with the rare class's figures
        line = re.search(rf"round {r}: ROC-AUC [\d.]+  PR-AUC [\d.]+  positive F1 .*", shown)
        assert line is not None, shown[-3000:]
        assert line.group(0).index("threshold") < line.group(0).index("accuracy")
    summaries = list((layout.root / "server" / "results").glob("*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    rows = [json.loads(s) for s in (summaries[0].parent / "metrics.jsonl").read_text().splitlines()]
    for k in ("roc_auc", "pr_auc", "f1_pos", "precision_pos", "recall_pos", "threshold"):
        assert summary[f"final_{k}"] == rows[-1][k] is not None, k
    assert 0 < summary["final_threshold"] < 1
    for proc in nodes:
        assert proc.wait(timeout=60) == 0
