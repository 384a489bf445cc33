"""The attack of #13 point 1: neighbouring data sets through every data path.

For each way a node (or a simulated client) gets its examples, build a data set, the
same with ONE record changed to an outlier, and the same with one record removed; load
each through the real loading path, run one DP step at sample rate 1 (the whole set)
with the same model and generator, and compare the sums of clipped per-example
gradients. DP-SGD's guarantee assumes they differ by at most 2C (changed) / C (removed).
Standardising with the node's own mean/std broke this by 9.1C; a seeded shuffle moved
hundreds of records across the train/test split.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pa_pq
import pytest
import torch

from fedguard.privacy.persample import PerSampleGradients
from fedguard.task import build_model
from fedguard.task import data as task_data
from fedguard.task.records import holdout_mask, simulation_holdout_key

C = 1.0
N = 60  # records per data set: small, and every record matters
SPLITS = ["none", "holdout"]  # a deployed node; a simulated client's training part

Variant = str  # "base", "changed" or "removed"
Loader = Callable[[Path, Variant, str, pytest.MonkeyPatch], task_data.Dataset]


def clipped_sum_step(ds: task_data.Dataset) -> torch.Tensor:
    """One DP-SGD step on every training example; returns the clipped gradient sum."""
    model = build_model(
        name="logreg",
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        generator=torch.Generator().manual_seed(0),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    grads = PerSampleGradients(model=model, mode="bk")
    optimizer = grads.optimizer(
        params=params,
        lr=0.1,
        momentum=0.0,
        noise_multiplier=1.0,
        max_grad_norm=C,
        expected_batch_size=len(ds.y_train),
        generator=torch.Generator().manual_seed(1),  # the same noise for every variant
    )
    grads.hooks(enabled=True)
    grads.backward(torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train))
    total = torch.cat([p.grad.detach().flatten().clone() for p in params])  # type: ignore[union-attr]
    optimizer.step()
    grads.hooks(enabled=False)
    return total


# ------------------------------------------------------------------ raw data per path


def _raw_table(variant: Variant) -> dict[str, list[object]]:
    rng = np.random.default_rng(0)
    table: dict[str, list[object]] = {
        "id": [f"p{i:03d}" for i in range(N)],
        "age": rng.integers(18, 90, N).tolist(),
        "balance": np.round(rng.normal(2000, 500, N), 2).tolist(),
        "student": rng.choice(["No", "Yes"], N).tolist(),
        "default": rng.choice(["No", "Yes"], N).tolist(),
    }
    if variant == "changed":  # an outlier a curious party could plant or target
        table["balance"][7] = 9.9e7
        table["age"][7] = 1000
    if variant == "removed":
        table = {k: v[:7] + v[8:] for k, v in table.items()}
    return table


_SCHEMA = """
[target]
column = "default"
labels = ["No", "Yes"]
[columns.id]
type = "identifier"
[columns.age]
type = "numeric"
range = [18, 100]
[columns.balance]
type = "numeric"
centre = 2000
scale = 500
clip = [0, 5000]
[columns.student]
type = "categorical"
levels = ["No", "Yes"]
"""


def _csv(tmp: Path, variant: Variant, split: str, _mp: pytest.MonkeyPatch) -> task_data.Dataset:
    table = _raw_table(variant)
    path = tmp / f"{variant}.csv"
    rows = [",".join(table)] + [
        ",".join(str(table[c][i]) for c in table) for i in range(len(table["id"]))
    ]
    path.write_text("\n".join(rows) + "\n")
    (tmp / "schema.toml").write_text(_SCHEMA)
    return task_data.load_dataset(name=str(path), seed=0, split=split, schema=tmp / "schema.toml")


def _csv_no_schema(
    tmp: Path, variant: Variant, split: str, _mp: pytest.MonkeyPatch
) -> task_data.Dataset:
    table = _raw_table(variant)
    path = tmp / f"{variant}-plain.csv"
    lines = ["age,balance,label"] + [
        f"{a},{b},{int(d == 'Yes')}"
        for a, b, d in zip(table["age"], table["balance"], table["default"], strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return task_data.load_dataset(name=str(path), seed=0, split=split, target="label")


def _parquet(tmp: Path, variant: Variant, split: str, _mp: pytest.MonkeyPatch) -> task_data.Dataset:
    table = _raw_table(variant)
    path = tmp / f"{variant}.parquet"
    pa_pq.write_table(pa.table(table), path)
    (tmp / "schema.toml").write_text(_SCHEMA)
    return task_data.load_dataset(name=str(path), seed=0, split=split, schema=tmp / "schema.toml")


def _arrays(variant: Variant, shape: tuple[int, ...], high: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, high, size=(N, *shape))
    y = rng.integers(0, 3, N)
    if variant == "changed":
        x[7] = high * 1e4
    if variant == "removed":
        x, y = np.delete(x, 7, axis=0), np.delete(y, 7)
    return x, y


def _npz(tmp: Path, variant: Variant, split: str, _mp: pytest.MonkeyPatch) -> task_data.Dataset:
    x, y = _arrays(variant, (5,), 10.0)
    path = tmp / f"{variant}.npz"
    np.savez(path, x=x, y=y)
    return task_data.load_dataset(name=str(path), seed=0, split=split)


def _sklearn(name: str) -> Loader:
    def load(tmp: Path, variant: Variant, split: str, mp: pytest.MonkeyPatch) -> task_data.Dataset:
        import sklearn.datasets as skd

        real = getattr(skd, f"load_{name}")()
        x = np.array(real.data[:N], dtype=np.float64)
        y = np.array(real.target[:N])
        if variant == "changed":
            x[7] = x.max() * 1e3
        if variant == "removed":
            x, y = np.delete(x, 7, axis=0), np.delete(y, 7)
        fake = SimpleNamespace(data=x, target=y, feature_names=getattr(real, "feature_names", []))
        mp.setattr(skd, f"load_{name}", lambda: fake)
        return task_data.load_dataset(name=name, seed=0, split=split)

    return load


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _fashion(name: str) -> Loader:
    def load(tmp: Path, variant: Variant, split: str, _mp: pytest.MonkeyPatch) -> task_data.Dataset:
        folder = tmp / f"fashion-{variant}"
        folder.mkdir(exist_ok=True)
        x, y = _arrays(variant, (8, 8), 200.0)
        x = np.clip(x, 0, 255)
        for prefix, images, labels in (("train", x, y), ("t10k", x[:5], y[:5])):
            (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
            (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
        return task_data.load_dataset(name=name, seed=0, split=split, data_dir=folder)

    return load


LOADERS: dict[str, Loader] = {
    "csv": _csv,
    "csv-no-schema": _csv_no_schema,
    "parquet": _parquet,
    "npz": _npz,
    "digits": _sklearn("digits"),
    "breast_cancer": _sklearn("breast_cancer"),
    "fashion_mnist": _fashion("fashion_mnist"),
    "fashion_mnist_scattering": _fashion("fashion_mnist_scattering"),
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("path", sorted(LOADERS))
def test_one_record_moves_the_clipped_sum_by_at_most_2c(
    path: str, split: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = LOADERS[path]
    base = load(tmp_path, "base", split, monkeypatch)
    changed = load(tmp_path, "changed", split, monkeypatch)
    removed = load(tmp_path, "removed", split, monkeypatch)
    sums = {k: clipped_sum_step(ds) for k, ds in (("b", base), ("c", changed), ("r", removed))}
    # The changed record really is different, else the test proves nothing.
    assert not np.array_equal(base.x_train, changed.x_train) or split == "holdout"
    moved_changed = float(torch.linalg.vector_norm(sums["b"] - sums["c"]))
    moved_removed = float(torch.linalg.vector_norm(sums["b"] - sums["r"]))
    assert moved_changed <= 2 * C * (1 + 1e-5), f"{path}: changed record moved {moved_changed}"
    assert moved_removed <= C * (1 + 1e-5), f"{path}: removed record moved {moved_removed}"


def test_removing_one_of_1000_records_moves_no_other_across_the_holdout() -> None:
    rng = np.random.default_rng(0)
    records = [rng.bytes(24) for _ in range(1000)]
    key = simulation_holdout_key(0)
    before = holdout_mask(records, key=key, fraction=0.2)
    for removed in (0, 499, 999):
        after = holdout_mask(records[:removed] + records[removed + 1 :], key=key, fraction=0.2)
        assert np.array_equal(np.delete(before, removed), after)  # 0 records moved
    assert 150 < before.sum() < 250  # and the share is about the fraction


def test_removing_one_row_of_a_file_keeps_every_other_records_side_and_key(tmp_path: Path) -> None:
    base = _csv(tmp_path, "base", "holdout", pytest.MonkeyPatch())
    removed = _csv(tmp_path, "removed", "holdout", pytest.MonkeyPatch())
    assert base.train_record_keys is not None and removed.train_record_keys is not None
    kept = {bytes(k) for k in base.train_record_keys}
    after = {bytes(k) for k in removed.train_record_keys}
    assert after <= kept and len(kept - after) <= 1


def test_record_keys_survive_reordering_copying_reseeding_and_rescaling(tmp_path: Path) -> None:
    """The per-record budget is indexed by these keys: none of these may reset a spend."""
    base = _csv(tmp_path, "base", "none", pytest.MonkeyPatch())
    assert base.train_record_keys is not None
    keys = sorted(bytes(k) for k in base.train_record_keys)
    assert len(set(keys)) == len(keys) == N
    lines = (tmp_path / "base.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    order = list(reversed(range(len(header))))  # columns reversed, rows reversed
    shuffled = tmp_path / "copy" / "moved.csv"
    shuffled.parent.mkdir()
    shuffled.write_text(
        "\n".join(",".join(r[i] for i in order) for r in [header, *reversed(rows)]) + "\n"
    )
    rescaled = tmp_path / "rescaled.toml"
    rescaled.write_text(_SCHEMA.replace("range = [18, 100]", 'range = [0, 120]\nscaling = "dp"'))
    for schema in (tmp_path / "schema.toml", rescaled):
        for seed in (0, 7):
            again = task_data.load_dataset(
                name=str(shuffled), seed=seed, split="none", schema=schema
            )
            assert sorted(bytes(k) for k in again.train_record_keys) == keys  # type: ignore[union-attr]
