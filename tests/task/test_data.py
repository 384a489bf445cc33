"""Data loading: built-ins, the IDX parser, user CSV/Parquet/NPZ files and their errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pa_pq
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from fedguard.errors import ConfigError, DataError
from fedguard.task.builtin_constants import BREAST_CANCER_COLUMNS, DIGITS_MEAN, DIGITS_SCALE
from fedguard.task.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_dataset,
    read_idx,
)
from fedguard.task.scattering import scatter_images

# ---------------------------------------------------------------- built-in data sets


def test_digits_uses_public_constants_and_a_per_record_holdout() -> None:
    ds = load_dataset(name="digits", seed=3)
    assert ds.is_image and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_test) == 1797 and 300 < len(ds.y_test) < 420
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.train_record_keys is not None and ds.train_record_keys.shape == (len(ds.y_train), 32)

    # Oracle: every row on its own, (x/16 - public mean) / public scale, in file order.
    raw = load_digits()
    every = load_dataset(name="digits", seed=3, split="none")
    expected = (raw.data / 16.0 - np.array(DIGITS_MEAN)) / np.array(DIGITS_SCALE)
    np.testing.assert_allclose(every.x_train.reshape(-1, 64), expected, atol=1e-5)
    np.testing.assert_array_equal(every.y_train, raw.target)
    assert every.x_test.shape == (0, 1, 8, 8)
    # The holdout is a subset of the rows, each kept whole.
    rows = {r.tobytes() for r in every.x_train}
    assert all(r.tobytes() in rows for r in ds.x_test)


def test_breast_cancer_uses_its_built_in_schema() -> None:
    ds = load_dataset(name="breast_cancer", seed=0, split="none")
    assert not ds.is_image and ds.input_shape == (30,) and ds.num_classes == 2
    assert ds.x_train.shape == (569, 30) and ds.x_test.shape == (0, 30)
    raw = load_breast_cancer()
    centre, scale, low, high = (
        np.array([c[k] for c in BREAST_CANCER_COLUMNS]) for k in (1, 2, 3, 4)
    )
    expected = (np.clip(raw.data, low, high) - centre) / scale
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-5, atol=1e-5)
    # Public constants, so the set is only roughly standardised.
    assert np.abs(ds.x_train.mean(axis=0)).max() < 0.05
    test = load_dataset(name="breast_cancer", seed=0, split="all-test")
    np.testing.assert_array_equal(test.x_test, ds.x_train)


def test_split_is_seeded_and_test_fraction_respected() -> None:
    a = load_dataset(name="breast_cancer", seed=1)
    b = load_dataset(name="breast_cancer", seed=1)
    c = load_dataset(name="breast_cancer", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    half = load_dataset(name="breast_cancer", seed=1, test_fraction=0.5)
    assert 230 < len(half.y_test) < 340  # each record held out with probability 0.5
    # Record keys name records, not seeds: the same records have the same keys.
    common = {bytes(k) for k in a.train_record_keys} & {bytes(k) for k in c.train_record_keys}
    assert len(common) > 300


def test_unknown_dataset_names_the_option_and_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(name="mnist", seed=0)
    assert str(info.value) == (
        "--dataset: expected one of digits, breast_cancer, fashion_mnist, "
        "fashion_mnist_scattering, a .csv/.parquet/.npz path, got 'mnist'"
    )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"seed": -1}, "--seed"),
        ({"seed": True}, "--seed"),
        ({"seed": 0, "test_fraction": 1.0}, "--test-fraction"),
        ({"seed": 0, "test_fraction": float("nan")}, "--test-fraction"),
        ({"seed": 0, "target": "label"}, "--target"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        load_dataset(name="digits", **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Fashion-MNIST / IDX


def _idx(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_read_idx_handwritten_big_endian_int16(tmp_path: Path) -> None:
    path = tmp_path / "tiny-idx2-short"
    # 2x3 int16, big-endian: 1, -2, 3, 256, 0, -32768
    path.write_bytes(
        b"\x00\x00\x0b\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03"
        b"\x00\x01\xff\xfe\x00\x03\x01\x00\x00\x00\x80\x00"
    )
    got = read_idx(path)
    assert got.dtype == np.int16 and got.dtype.isnative
    np.testing.assert_array_equal(got, [[1, -2, 3], [256, 0, -32768]])


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (_idx(0x08, (2, 3), bytes(5)), "truncated"),
        (_idx(0x08, (2, 3), bytes(7)), "trailing bytes"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"PK\x03\x04 not idx", "bad magic number"),
        (b"\x1f\x8b\x08\x00 broken gzip", "not a readable gzip file"),
    ],
)
def test_read_idx_rejects_malformed_files_naming_them(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value) and needle in str(info.value)
    assert "\n" not in str(info.value)


def _write_fashion(folder: Path, *, gz: bool, n_train: int = 4, n_test: int = 2) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, arr, code in (("images-idx3", images, 0x08), ("labels-idx1", labels, 0x08)):
            data = _idx(code, arr.shape, arr.tobytes())
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path: Path, gz: bool) -> None:
    _write_fashion(tmp_path, gz=gz)
    ds = load_dataset(name="fashion_mnist", seed=0, data_dir=tmp_path)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.is_image
    assert ds.x_train.shape == (4, 1, 28, 28) and ds.x_test.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3])
    raw = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    expected = (raw / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    np.testing.assert_allclose(ds.x_train[:, 0], expected, atol=1e-6)
    assert ds.x_train.dtype == np.float32


def test_fashion_mnist_scattering_is_the_scattered_images(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=True)
    ds = load_dataset(name="fashion_mnist_scattering", seed=0, data_dir=tmp_path)
    assert ds.name == "fashion_mnist_scattering" and ds.num_classes == 10
    assert ds.input_shape == (81, 7, 7) and ds.x_train.shape == (4, 81, 7, 7)
    assert ds.x_test.shape == (2, 81, 7, 7)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3])
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
    # The images in [0, 1], as Tramer & Boneh scattered them (not standardised).
    expected = scatter_images(raw, scales=2, angles=8)
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-4, atol=1e-5)


def test_fashion_mnist_missing_files_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name="fashion_mnist", seed=0, data_dir=tmp_path)
    assert str(info.value) == (
        f"dataset fashion_mnist: IDX files not found in {tmp_path} "
        "(install Debian's package: apt-get install -y dataset-fashion-mnist)"
    )


def test_fashion_mnist_partly_missing_names_the_missing_file(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found.*apt-get"):
        load_dataset(name="fashion_mnist", seed=0, data_dir=tmp_path)


@pytest.mark.skipif(FASHION_MNIST_DIR.exists(), reason="the Debian package is installed")
def test_fashion_mnist_default_folder_message() -> None:
    with pytest.raises(DataError, match=r"^dataset fashion_mnist: IDX files not found in "):
        load_dataset(name="fashion_mnist", seed=0)


# ---------------------------------------------------------------- user files


def _table(n_per_class: int = 10) -> pa.Table:
    names = ["emu", "cat", "dog"]  # not sorted: ids must follow sorted order
    rng = np.random.default_rng(1)
    label = [names[i % 3] for i in range(3 * n_per_class)]
    rank = {"cat": 0, "dog": 1, "emu": 2}
    # Feature `a` encodes the expected class id so the mapping can be checked after the split.
    a = [10.0 * rank[s] + rng.uniform() for s in label]
    b = rng.integers(0, 5, size=len(label))
    return pa.table({"a": a, "label": label, "b": b})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_schema_numbers_labels_in_declared_order(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    table = _table()
    if suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        pa_pq.write_table(table, path)
    schema = tmp_path / "s.toml"
    schema.write_text(
        '[target]\ncolumn = "label"\nlabels = ["cat", "dog", "emu"]\n'
        '[columns.a]\ntype = "numeric"\nrange = [0, 30]\n'
        '[columns.b]\ntype = "numeric"\ncentre = 2\nscale = 2\n'
    )
    ds = load_dataset(name=str(path), seed=0, schema=schema, split="none")
    assert ds.num_classes == 3 and ds.input_shape == (2,) and not ds.is_image
    raw = table.to_pydict()
    expected_y = [["cat", "dog", "emu"].index(v) for v in raw["label"]]
    np.testing.assert_array_equal(ds.y_train, expected_y)
    np.testing.assert_allclose(ds.x_train[:, 0], (np.array(raw["a"]) - 15) / 15, atol=1e-6)
    np.testing.assert_allclose(ds.x_train[:, 1], (np.array(raw["b"]) - 2) / 2, atol=1e-6)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64


def test_string_labels_without_schema_say_how_to_declare_them(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    pa_csv.write_csv(_table(), path)
    with pytest.raises(DataError) as info:
        load_dataset(name=str(path), seed=0, target="label")
    msg = str(info.value)
    assert msg.startswith(f"{path}: row 1: target 'label' is 'emu'") and "--schema" in msg


@pytest.mark.parametrize("target", ["lbl", None])
def test_missing_target_names_option_columns_and_value(tmp_path: Path, target: str | None) -> None:
    path = tmp_path / "data.csv"
    pa_csv.write_csv(_table(), path)
    with pytest.raises(ConfigError) as info:
        load_dataset(name=str(path), seed=0, target=target)
    assert str(info.value) == f"{path}: --target: expected one of a, label, b, got {target!r}"


def test_non_numeric_feature_names_column_and_file(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    table = _table().append_column("city", pa.array(["x"] * 30))
    table = table.set_column(1, "label", pa.array([i % 3 for i in range(30)]))
    pa_pq.write_table(table, path)
    with pytest.raises(DataError, match=r"data\.parquet: row 1: feature column 'city' holds text"):
        load_dataset(name=str(path), seed=0, target="label")


def test_missing_file_names_path_and_os_reason(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as info:
        load_dataset(name=str(path), seed=0, target="y")
    assert str(info.value) == f"{path}: cannot read (No such file or directory)"


def test_malformed_csv_is_one_line_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,y\n1,2,0\n3,4\n")
    with pytest.raises(DataError) as info:
        load_dataset(name=str(path), seed=0, target="y")
    assert str(info.value).startswith(f"{path}: cannot parse (") and "\n" not in str(info.value)


def test_integer_labels_without_schema_are_class_ids(tmp_path: Path) -> None:
    path = tmp_path / "rare.csv"
    path.write_text("f,y\n" + "".join(f"{i},{1 if i == 0 else 0}\n" for i in range(20)))
    ds = load_dataset(name=str(path), seed=0, target="y", split="none")
    assert len(ds.y_train) == 20 and ds.num_classes == 2 and ds.y_train[0] == 1
    np.testing.assert_array_equal(ds.x_train[:, 0], np.arange(20))  # used as is


def test_npz_with_and_without_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)) * 7 + 3
    y = np.arange(40) % 4
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, x_test=x[:6], y_test=y[:6])
    ds = load_dataset(name=str(path), seed=0)
    np.testing.assert_array_equal(ds.x_train, x.astype(np.float32))  # no standardisation
    assert ds.num_classes == 4 and ds.x_test.shape == (6, 5) and ds.x_train.dtype == np.float32

    path2 = tmp_path / "imgs.npz"
    np.savez(path2, x=rng.normal(size=(40, 6, 6)), y=y % 2)
    ds2 = load_dataset(name=str(path2), seed=0, test_fraction=0.25)
    assert ds2.input_shape == (1, 6, 6) and ds2.is_image and ds2.num_classes == 2
    assert len(ds2.y_train) + len(ds2.y_test) == 40 and set(ds2.y_train) == {0, 1}

    np.savez(path2, x=rng.normal(size=(40, 6, 6)), y=np.where(y % 2, "yes", "no"))
    with pytest.raises(DataError, match=r"imgs\.npz: 'y' must hold integer class ids"):
        load_dataset(name=str(path2), seed=0)


def test_too_few_rows_for_a_split_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "one.npz"
    np.savez(path, x=np.zeros((1, 2)), y=np.array([0]))
    with pytest.raises(DataError, match=r"one\.npz: 1 rows are too few .* test_fraction=0\.2"):
        load_dataset(name=str(path), seed=0)
    assert len(load_dataset(name=str(path), seed=0, split="none").y_train) == 1


def test_npz_refuses_pickled_arrays(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([object()] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DataError, match=r"evil\.npz: cannot parse"):
        load_dataset(name=str(path), seed=0)
