"""#17.4: the mapping of labels to classes is printed by `fedguard simulate` and stored in
summary.json; a column that looks like an identifier is not used as a feature without a
schema (refused in one line naming the file, the column and how to declare it)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedguard.errors import DataError
from fedguard.task import load_dataset

SCHEMA = """[target]
column = "default"
labels = ["No", "Yes"]
[columns.customer_id]
type = "identifier"
[columns.balance]
type = "numeric"
centre = 1000
scale = 500
clip = [0, 5000]
[columns.student]
type = "categorical"
levels = ["No", "Yes"]
"""


def _table(tmp_path: Path, n: int = 60, *, labels=("No", "Yes"), ids=None) -> Path:
    rng = np.random.default_rng(0)
    ids = ids if ids is not None else [1000 + i for i in range(n)]
    rows = [
        f"{ids[i]},{rng.integers(0, 5000)},{labels[0] if i % 3 else labels[1]},{labels[i % 2]}\n"
        for i in range(n)
    ]
    path = tmp_path / "bank.csv"
    path.write_text("customer_id,balance,student,default\n" + "".join(rows))
    return path


def test_simulate_prints_and_stores_the_label_mapping(tmp_path: Path):
    data = _table(tmp_path)
    (tmp_path / "schema.toml").write_text(SCHEMA)
    out = subprocess.run(
        [sys.executable, "-m", "fedguard", "simulate", "--dataset", str(data), "--schema",
         str(tmp_path / "schema.toml"), "--rounds", "1", "--clients", "2", "--no-dp",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "classes (label -> id): 'No' -> 0, 'Yes' -> 1" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["classes"] == ["No", "Yes"]


def test_without_schema_the_ids_are_the_classes_and_booleans_named(tmp_path: Path):
    path = tmp_path / "b.csv"
    rows = "".join(f"{i % 7},{'true' if i % 2 else 'false'}\n" for i in range(40))
    path.write_text("x,y\n" + rows)
    ds = load_dataset(name=str(path), target="y", seed=0)
    assert ds.class_names == ("false", "true")


def test_an_identifier_column_is_refused_without_a_schema(tmp_path: Path):
    """Before: customer numbers went into the model as a feature, without a word."""
    data = _table(tmp_path, labels=("0", "1"))
    text = data.read_text().replace(",No,", ",0,").replace(",Yes,", ",1,")
    data.write_text(text)
    with pytest.raises(DataError) as err:
        load_dataset(name=str(data), target="default", seed=0)
    msg = str(err.value)
    assert str(data) in msg and "'customer_id'" in msg and 'type = "identifier"' in msg
    assert "\n" not in msg
    # The same column named as a measurement, or holding repeated values, is a feature.
    repeated = _table(tmp_path, labels=("0", "1"), ids=[i % 5 for i in range(60)])
    repeated.write_text(repeated.read_text().replace(",No,", ",0,").replace(",Yes,", ",1,"))
    assert load_dataset(name=str(repeated), target="default", seed=0).input_shape == (3,)
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(text.replace("customer_id,", "tenure_days,", 1))
    assert load_dataset(name=str(renamed), target="default", seed=0).input_shape == (3,)
