"""``fedguard sweep`` end to end on a tiny real grid: files, resume, and input errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import fedguard.task.data
from fedguard.cli import main
from fedguard.errors import ConfigError
from fedguard.fl.data import clear_data_cache
from fedguard.fl.loop import RoundRecord
from fedguard.simulations.sweep import (
    Cell,
    CellResult,
    SweepPlan,
    SweepResult,
    load_sweep,
    plan_sweep,
    run_sweep,
)

# 2 epsilons (one non-private) x 2 seeds x (iid, dirichlet) = 8 runs of 3 rounds each.
TINY = """\
dataset = "digits"
model = "logreg"
clients = 4
rounds = 3
batch-size = 32
epsilon = [2.0, "non-private"]
seed = [0, 1]
partition = ["iid", "dirichlet"]
alpha = 0.5
"""


class Recorder:
    """A real observer that keeps what it was told."""

    def __init__(self) -> None:
        self.finished_before: int | None = None
        self.started: list[tuple[str, bool]] = []
        self.rounds = 0
        self.done: list[CellResult] = []

    def sweep_started(self, *, plan: SweepPlan, finished: int) -> None:
        self.finished_before = finished

    def cell_started(self, *, index: int, cell: Cell, reused: bool) -> None:
        self.started.append((cell.name, reused))

    def round_done(self, record: RoundRecord) -> None:
        self.rounds += 1

    def cell_done(self, *, index: int, result: CellResult) -> None:
        self.done.append(result)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepResult, Recorder]:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "sweep.toml").write_text(TINY)
    plan = load_sweep(path=folder / "sweep.toml", out=folder / "out")
    recorder = Recorder()
    return run_sweep(plan=plan, observer=recorder), recorder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_cell_runs_once_and_is_reported(tiny: tuple[SweepResult, Recorder]) -> None:
    result, recorder = tiny
    assert result.ran == 8 and result.reused == 0
    assert recorder.finished_before == 0 and recorder.rounds == 8 * 3
    assert [reused for _, reused in recorder.started] == [False] * 8
    # Seeds outermost: seed 0's whole curve comes first.
    assert [r.cell.seed for r in recorder.done] == [0] * 4 + [1] * 4
    for r in result.results:
        assert (result.out / "runs" / r.cell.name / "summary.json").is_file()
        assert r.cell.config.no_dp == (not r.cell.private)


def test_results_csv_has_one_row_per_run_with_every_setting(
    tiny: tuple[SweepResult, Recorder],
) -> None:
    result, _ = tiny
    rows = read_csv(result.results_csv)
    assert len(rows) == 8
    for column in (
        "run", "epsilon", "private", "partition", "alpha", "clients_per_round", "seed",
        "dataset", "model", "clients", "rounds", "batch_size", "lr", "max_grad_norm",
        "final_accuracy", "best_accuracy", "best_round", "final_f1_macro", "final_roc_auc",
        "epsilon_reached", "delta", "accountant", "wall_seconds",
    ):  # fmt: skip
        assert column in rows[0], column
    assert len(rows[0]) == len(set(rows[0]))  # no column twice
    grid = {(r["epsilon"], r["partition"], r["alpha"], r["seed"]) for r in rows}
    assert grid == {
        (eps, part, alpha, seed)
        for eps in ("2.0", "inf")
        for part, alpha in (("iid", ""), ("dirichlet", "0.5"))
        for seed in ("0", "1")
    }
    for r in rows:
        assert r["dataset"] == "digits" and r["clients_per_round"] == "4" and r["rounds"] == "3"
        assert float(r["best_accuracy"]) >= float(r["final_accuracy"]) > 0.1
        assert 0 < float(r["final_f1_macro"]) <= 1 and float(r["wall_seconds"]) > 0
        assert r["final_roc_auc"] == ""  # digits has 10 classes: no AUC
        if r["private"] == "true":
            assert 0.97 * 2.0 <= float(r["epsilon_reached"]) <= 2.0
            assert (r["delta"], r["accountant"]) == ("1e-05", "rdp")
        else:
            assert (r["epsilon_reached"], r["delta"], r["accountant"]) == ("", "", "")
        summary = json.loads((result.out / "runs" / r["run"] / "summary.json").read_text())
        assert float(r["final_accuracy"]) == summary["final_accuracy"]


def test_plot_is_a_png(tiny: tuple[SweepResult, Recorder]) -> None:
    result, _ = tiny
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _channels = imread(result.plot).shape
    assert width > 400 and height > 300


def test_report_has_the_tables_and_the_plot(tiny: tuple[SweepResult, Recorder]) -> None:
    result, _ = tiny
    report = result.report.read_text()
    assert "![final test accuracy against target epsilon](accuracy_vs_epsilon.png)" in report
    assert "| partitioning | clients/round | target epsilon | seeds | final accuracy |" in report
    assert "| dirichlet alpha=0.5 | 4 | non-private | 2 |" in report
    assert "| iid | 4 | 2 | 2 |" in report
    for r in result.results:
        assert f"| {r.cell.name} |" in report
    assert " ± " in report


def test_rerun_skips_finished_cells_and_finishes_an_interrupted_one(
    tiny: tuple[SweepResult, Recorder], tmp_path: Path
) -> None:
    result, _ = tiny
    out = tmp_path / "copy"
    shutil.copytree(result.out, out)  # another folder: the run paths are not compared
    interrupted = out / "runs" / "eps-2_iid_cpr-4_seed-1"
    (interrupted / "summary.json").unlink()  # as if killed before its last write
    summaries = sorted(out.glob("runs/*/summary.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in summaries}
    recorder = Recorder()
    plan = plan_sweep(settings=_tiny_settings(), out=out)
    again = run_sweep(plan=plan, observer=recorder)
    assert (again.ran, again.reused, recorder.finished_before) == (1, 7, 7)
    assert [name for name, reused in recorder.started if not reused] == [interrupted.name]
    assert recorder.rounds == 3
    assert {p: p.stat().st_mtime_ns for p in summaries} == mtimes  # untouched
    assert len(read_csv(again.results_csv)) == 8


def test_changed_settings_rerun_and_overwrite_reruns_everything(tmp_path: Path) -> None:
    settings = {"clients": 3, "rounds": 1, "epsilon": [math.inf], "seed": [0, 1]}
    first = run_sweep(plan=plan_sweep(settings=settings, out=tmp_path))
    assert (first.ran, first.reused) == (2, 0)
    assert run_sweep(plan=plan_sweep(settings=settings, out=tmp_path)).ran == 0
    changed = run_sweep(plan=plan_sweep(settings={**settings, "rounds": 2}, out=tmp_path))
    assert (changed.ran, changed.reused) == (2, 0)  # same folders, other settings
    again = run_sweep(plan=plan_sweep(settings={**settings, "rounds": 2}, out=tmp_path))
    assert again.ran == 0
    fresh = run_sweep(
        plan=plan_sweep(settings={**settings, "rounds": 2}, out=tmp_path), overwrite=True
    )
    assert (fresh.ran, fresh.reused) == (2, 0)


def test_grid_expansion_alpha_only_for_dirichlet_and_cohort_sizes(tmp_path: Path) -> None:
    plan = plan_sweep(
        settings={
            "clients": 6,
            "epsilon": [1, 8, "inf"],
            "partition": ["iid", "dirichlet", "shards"],
            "alpha": [0.1, 1.0],
            "clients-per-round": [2, 6],
        },
        out=tmp_path / "never",
    )
    assert len(plan.cells) == 3 * (1 + 2 + 1) * 2
    assert {c.partitioning for c in plan.cells} == {
        "iid", "shards", "dirichlet alpha=0.1", "dirichlet alpha=1"
    }  # fmt: skip
    names = {c.name for c in plan.cells}
    assert "eps-8_dirichlet-0.1_cpr-2_seed-0" in names and "eps-inf_iid_cpr-6_seed-0" in names
    assert not (tmp_path / "never").exists()  # planning writes nothing


def _tiny_settings() -> dict[str, object]:
    import tomllib

    return tomllib.loads(TINY)


def _cli(tmp_path: Path, text: str, *args: str) -> tuple[int, str, str]:
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    try:
        main(["sweep", "--config", str(config), "--out", str(tmp_path / "out"), *args])
    except SystemExit as exc:
        return int(exc.code or 0), config.name, str(config)
    return 0, config.name, str(config)


EPS = 'epsilon: expected numbers > 0, or inf / "non-private" (no DP), got '
LISTS = "only epsilon, seed, partition, alpha, clients-per-round take lists"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epsilon = [1.0, -3]", EPS + "-3"),
        ("epsilon = [1.0, nan]", EPS + "nan"),
        ('epsilon = ["private"]', EPS + "'private'"),
        ("epsilon = []", "epsilon: expected a value or a non-empty list, got []"),
        ("seed = [0, 0]", "seed: expected distinct values, got [0, 0]"),
        ("seed = [0, -1]", "seed: expected integers >= 0, got -1"),
        ('partition = ["iid", "zipf"]',
         "partition: expected one of iid, dirichlet, shards, got 'zipf'"),
        ("alpha = [0.1, 0.5]",
         "alpha: expected one value unless partition lists dirichlet, got [0.1, 0.5]"),
        ("rounds = [1, 2]", f"rounds: expected a single value ({LISTS}), got [1, 2]"),
        ("no-dp = true", 'no-dp: expected epsilon = [..., "non-private"] instead, got True'),
        ("clients = 5\nclients-per-round = [2, 9]",
         "--clients-per-round: expected an integer between 1 and --clients (5), got 9"),
        ("lr = 0", "--lr: expected a finite number > 0, got 0.0"),
        ("bogus = 1", "bogus: expected a known key: "),
        ('dataset = "missing.csv"', "dataset: missing.csv: cannot read"),
        ("clients = 5000", "--clients: expected at most 704 for 1408 samples, got 5000"),
        ("[grid]\nseed = 1", "grid: expected a value (tables are not used), got {'seed': 1}"),
    ],
)  # fmt: skip
def test_bad_input_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    code, _name, path = _cli(tmp_path, text)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"fedguard: error: {path}: {message}")
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]


def test_out_holding_other_files_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, _ = _cli(tmp_path, "epsilon = inf\nrounds = 1")
    assert code == 2
    assert "--out: expected a new or empty folder or an earlier sweep's" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: cannot read .*nope.toml"):
        load_sweep(path=tmp_path / "nope.toml")


def test_cli_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = 'clients = 3\nrounds = 2\nepsilon = inf\nseed = [0, 1]\npartition = "dirichlet"'
    assert _cli(tmp_path, text)[0] == 0
    out = capsys.readouterr().out
    assert "fedguard sweep: 2 runs" in out and "0 finished earlier, 2 to run" in out
    assert "[2/2] dirichlet alpha=0.5, 3/round, non-private, seed 1: accuracy" in out
    assert _cli(tmp_path, text)[0] == 0
    out = capsys.readouterr().out
    assert "2 finished earlier, 0 to run" in out and "finished earlier" in out
    for name in ("results.csv", "accuracy_vs_epsilon.png", "report.md", "sweep.json"):
        assert (tmp_path / "out" / name).is_file()


def test_the_example_sweep_file_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "sweep.toml"
    plan = load_sweep(path=example, out=tmp_path / "never")
    assert len(plan.cells) == 4 * 3 * 3
    assert not (tmp_path / "never").exists()


@pytest.fixture
def small_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """120 random 28x28 images in Fashion-MNIST's IDX files, as the default folder: the
    sweep files are checked without Debian's package (CI may not have it)."""
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 100), ("t10k", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(f">HBB{arr.ndim}I", 0, 0x08, arr.ndim, *arr.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())
    monkeypatch.setattr(fedguard.task.data, "FASHION_MNIST_DIR", folder)
    clear_data_cache()  # data sets are cached per process: keep the fake one out of others
    yield folder
    clear_data_cache()


@pytest.mark.parametrize(
    ("name", "dataset", "model"),
    [
        ("fmnist.toml", "fashion_mnist_scattering", "scatter_cnn"),
        ("fmnist_cnn.toml", "fashion_mnist", "tb_cnn"),
    ],
)
def test_the_fashion_mnist_benchmark_files_are_valid(
    tmp_path: Path, small_fashion_mnist: Path, name: str, dataset: str, model: str
) -> None:
    # make bench-fmnist's grid (and its end-to-end reference): 4 epsilons x 2 partitionings,
    # 10 clients, every one every round, delta 1e-5.
    example = Path(__file__).resolve().parents[2] / "examples" / name
    plan = load_sweep(path=example, out=tmp_path / "never")
    assert len(plan.cells) == 8
    configs = [cell.config for cell in plan.cells]
    assert {(c.dataset, c.model, c.clients, c.delta) for c in configs} == {
        (dataset, model, 10, 1e-5)
    }
    assert {c.partition for c in configs} == {"iid", "dirichlet"}
    assert sorted({c.epsilon for c in configs if c.epsilon is not None}) == [1.0, 3.0, 8.0]
    assert not (tmp_path / "never").exists()
