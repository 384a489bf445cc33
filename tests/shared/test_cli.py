"""`fedguard simulate` on bad input: one line naming the option, exit 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def fedguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedguard", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "records.csv"
    rows = ["age,dose,outcome"] + [
        f"{rng.integers(20, 90)},{rng.random():.3f},{i % 2}" for i in range(40)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--dataset", "mnist"], ["--dataset", "digits", "breast_cancer", "'mnist'"]),
        (["--model", "resnet"], ["--model", "logreg", "'resnet'"]),
        (["--epsilon", "0"], ["--epsilon", "> 0", "0.0"]),
        (["--epsilon", "-3"], ["--epsilon", "-3.0"]),
        (["--clients", "5000"], ["--clients", "5000"]),
        (["--partition", "zipf"], ["--partition", "iid", "'zipf'"]),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], fragments: list[str]):
    out = tmp_path / "out"
    line = one_error_line(fedguard("simulate", *args, "--out", str(out), cwd=tmp_path))
    for fragment in fragments:
        assert fragment in line
    assert not out.exists(), "bad input must not leave output files"


def test_missing_target_column_names_the_columns(tmp_path: Path, csv_file: Path):
    out = tmp_path / "out"
    line = one_error_line(
        fedguard(
            "simulate",
            "--dataset",
            str(csv_file),
            "--target",
            "label",
            "--out",
            str(out),
            cwd=tmp_path,
        )
    )
    for fragment in ("--target", "age", "dose", "outcome", "'label'", "records.csv"):
        assert fragment in line
    assert not out.exists()


def test_unreadable_files(tmp_path: Path):
    out = tmp_path / "out"
    line = one_error_line(
        fedguard(
            "simulate",
            "--dataset",
            str(tmp_path / "nope.csv"),
            "--target",
            "y",
            "--out",
            str(out),
            cwd=tmp_path,
        )
    )
    assert "nope.csv" in line
    line = one_error_line(
        fedguard(
            "simulate", "--config", str(tmp_path / "nope.toml"), "--out", str(out), cwd=tmp_path
        )
    )
    assert "--config" in line and "nope.toml" in line
    assert not out.exists()


def test_csv_federation_runs_end_to_end(tmp_path: Path, csv_file: Path):
    out = tmp_path / "out"
    result = fedguard(
        "simulate",
        "--dataset",
        str(csv_file),
        "--target",
        "outcome",
        "--model",
        "logreg",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "summary.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_existing_results_are_not_overwritten_silently(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    line = one_error_line(fedguard("simulate", "--out", str(out), cwd=tmp_path))
    assert "--out" in line and "--overwrite" in line
    assert (out / "summary.json").read_text() == "{}"
