"""Data sets every part of fedguard trains on: built-ins and the user's own files.

Built-ins: ``digits`` and ``breast_cancer`` ship with scikit-learn (nothing is
downloaded); ``fashion_mnist`` is read from the IDX files of Debian's
``dataset-fashion-mnist`` package, and ``fashion_mnist_scattering`` is the same images as
ScatterNet features (:mod:`fedguard.task.scattering`). A path ending ``.csv``,
``.parquet`` or ``.npz`` loads the user's own data (:mod:`fedguard.task.user_files`).
Every loader returns a :class:`Dataset` whose features are float32 and whose labels are
int64 class ids ``0..num_classes-1``.

Nothing here is fitted to the records. Anything computed from the records before DP-SGD
is part of the mechanism, and a mean/std fitted to a node's rows (or a seeded shuffle
deciding a split) lets one record move every other example. So every transform is
per record with public constants (:mod:`fedguard.task.builtin_constants`, a declared
:mod:`~fedguard.task.schema`, Fashion-MNIST's published mean/std), or, for schema
columns with ``scaling = "dp"``, left for the caller to scale with a DP estimate charged
to the budget (:attr:`Dataset.dp_scaling`, :func:`apply_scaling`). Splits decide each
record's side from a keyed hash of that record alone (:mod:`fedguard.task.records`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedguard.errors import DataError, invalid
from fedguard.task.builtin_constants import (
    BREAST_CANCER_COLUMNS,
    BREAST_CANCER_LABELS,
    DIGITS_MEAN,
    DIGITS_SCALE,
)
from fedguard.task.idx import read_idx
from fedguard.task.records import (
    array_record_bytes,
    holdout_mask,
    record_keys,
    simulation_holdout_key,
)
from fedguard.task.schema import Column, DPScalingPlan, Schema, load_schema

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SPLITS",
    "Dataset",
    "apply_scaling",
    "load_dataset",
    "read_idx",
]

DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "breast_cancer",
    "fashion_mnist",
    "fashion_mnist_scattering",
)
"""Built-in data sets. A path ending ``.csv``, ``.parquet`` or ``.npz`` is accepted too."""

SPLITS: tuple[str, ...] = ("holdout", "none", "all-test")
"""``holdout``: a share of the records (each by a keyed hash of itself) is the test set
(simulation; a node's optional validation share). ``none``: every record trains (a
deployed node). ``all-test``: every record is test data (the server's evaluation file).
Data with a fixed, public split (Fashion-MNIST's two files, an ``.npz`` with
``x_test``) keeps it: ``none`` is its training part, ``all-test`` its test part."""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
"""Per-pixel mean/std of the Fashion-MNIST training images scaled to [0, 1]: published
constants applied to each image on its own (with the files' fixed split, nothing here
depends on a node's other records)."""

_FILE_SUFFIXES = (".csv", ".parquet", ".npz")
_DATASET_ALLOWED = (*DATASET_NAMES, "a .csv/.parquet/.npz path")
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_FASHION_HINT = "install Debian's package: apt-get install -y dataset-fashion-mnist"


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Dataset:
    """A train/test split ready for training.

    ``x_*`` are float32 with shape ``(N, *input_shape)``: ``(N, C, H, W)`` for images,
    ``(N, F)`` for tabular data. ``y_*`` are int64 class ids in ``0..num_classes-1``.
    ``train_record_keys`` (``(N_train, 32)`` uint8, in memory only, never written or
    sent) is the SHA-256 of each training record's canonical raw bytes: it names a record
    whatever the row order, file copy, seed or scaling. ``dp_scaling`` names feature
    columns left clipped but unscaled until a DP estimate is applied (:func:`apply_scaling`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    train_record_keys: np.ndarray | None = None
    dp_scaling: DPScalingPlan | None = None
    # Each class id's label as the data names it (a schema's labels); () = the ids.
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[1:] != self.input_shape or y.shape != (x.shape[0],):
                raise ValueError(
                    f"Dataset {self.name}: {split} arrays x{x.shape}/y{y.shape} do not match "
                    f"input_shape {self.input_shape}"
                )
        keys = self.train_record_keys
        if keys is not None and (keys.shape != (len(self.y_train), 32) or keys.dtype != np.uint8):
            raise ValueError(
                f"Dataset {self.name}: train_record_keys {keys.shape} {keys.dtype} must be "
                f"({len(self.y_train)}, 32) uint8"
            )

    @property
    def is_image(self) -> bool:
        """Whether examples are ``(C, H, W)`` images (else flat feature vectors)."""
        return len(self.input_shape) == 3


@dataclass(frozen=True)
class _Rows:
    """Encoded examples (public per-record transforms done) and their canonical bytes."""

    x: np.ndarray
    y: np.ndarray
    records: list[bytes]


def load_dataset(
    *,
    name: str,
    seed: int,
    target: str | None = None,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
    schema: Schema | Path | None = None,
    split: str = "holdout",
    split_key: bytes | None = None,
) -> Dataset:
    """Load a built-in data set or a ``.csv``/``.parquet``/``.npz`` file.

    Parameters
    ----------
    name
        One of :data:`DATASET_NAMES`, or a path ending ``.csv``, ``.parquet`` or ``.npz``.
    seed
        Derives the simulation's holdout key when ``split_key`` is not given.
    target
        Label column of a CSV/Parquet file without a schema (with one: ``[target]`` of
        the schema, and ``target`` may only repeat it); refused elsewhere.
    test_fraction
        ``split="holdout"``: each record's probability of being held out, in (0, 1).
    data_dir
        Folder of the Fashion-MNIST IDX files (default :data:`FASHION_MNIST_DIR`).
    schema
        A declared feature schema (object or file) for a CSV/Parquet file.
    split
        One of :data:`SPLITS`.
    split_key
        ``split="holdout"``: the key of the per-record hash (a node's comes from its
        secret: ``keyed_digest(secret, LABEL_VALIDATION, b"")``); default from ``seed``.

    Raises
    ------
    ConfigError
        Unknown name or split, bad ``seed``/``test_fraction``, bad target or schema.
    DataError
        A file is missing, unreadable or malformed, or a value breaks the schema.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise invalid("--seed", allowed="an integer in [0, 2**32)", got=seed)
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not 0.0 < test_fraction < 1.0
    ):
        raise invalid("--test-fraction", allowed="a number in (0, 1)", got=test_fraction)
    if split not in SPLITS:
        raise invalid("split", allowed=SPLITS, got=split)
    suffix = Path(name).suffix.lower()
    if name not in DATASET_NAMES and suffix not in _FILE_SUFFIXES:
        raise invalid("--dataset", allowed=_DATASET_ALLOWED, got=name)
    if schema is not None and suffix not in (".csv", ".parquet"):
        raise invalid(
            "--schema",
            allowed="no schema (only .csv/.parquet files are described by one)",
            got=str(schema.source if isinstance(schema, Schema) else schema),
            source=name if suffix else None,
        )
    key = split_key if split_key is not None else simulation_holdout_key(int(seed))
    pick = _Picker(split=split, key=key, fraction=float(test_fraction), source=name)
    if suffix in (".csv", ".parquet"):
        from fedguard.task.user_files import load_table

        parsed = load_schema(schema) if isinstance(schema, Path | str) else schema
        table = load_table(Path(name), target=target, schema=parsed)
        rows = _Rows(table.x, table.y, table.records)
        return pick.dataset(name, rows, None, table.num_classes, table.plan, table.classes)
    if target is not None:
        raise invalid(
            "--target",
            allowed="no --target (only .csv/.parquet files have label columns)",
            got=target,
            source=name if suffix else None,
        )
    if suffix == ".npz":
        from fedguard.task.user_files import load_npz

        arrays = load_npz(Path(name))
        train = _Rows(arrays.x, arrays.y, arrays.records)
        test = None
        if arrays.x_test is not None and arrays.y_test is not None:
            test = _Rows(arrays.x_test, arrays.y_test, [])
        return pick.dataset(name, train, test, arrays.num_classes, None)
    if name in ("fashion_mnist", "fashion_mnist_scattering"):
        train, test = _load_fashion_mnist(data_dir or FASHION_MNIST_DIR)
        ds = pick.dataset("fashion_mnist", train, test, 10, None)
        return _scattered(ds) if name == "fashion_mnist_scattering" else ds
    rows, num_classes = _load_sklearn(name)
    return pick.dataset(name, rows, None, num_classes, None)


def apply_scaling(dataset: Dataset, *, centre: np.ndarray, scale: np.ndarray) -> Dataset:
    """Scale the columns of ``dataset.dp_scaling`` as ``(x - centre) / scale``.

    ``centre``/``scale`` come from a DP estimate charged to the budget
    (:func:`fedguard.privacy.dp_scaling.dp_centre_scale`) or are public; the result has
    no pending columns.
    """
    plan = dataset.dp_scaling
    if plan is None:
        return dataset
    centre = np.asarray(centre, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    shape = (len(plan.columns),)
    if centre.shape != shape or scale.shape != shape or not (scale > 0).all():
        raise ValueError(f"centre/scale: expected shape {shape} with scale > 0")
    cols = list(plan.columns)

    def scaled(x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[:, cols] = ((x[:, cols] - centre) / scale).astype(np.float32)
        return out

    return dataclasses.replace(
        dataset, x_train=scaled(dataset.x_train), x_test=scaled(dataset.x_test), dp_scaling=None
    )


@dataclass(frozen=True)
class _Picker:
    """Turns encoded rows into the :class:`Dataset` a split asks for."""

    split: str
    key: bytes
    fraction: float
    source: str

    def dataset(
        self,
        name: str,
        rows: _Rows,
        fixed_test: _Rows | None,
        num_classes: int,
        plan: DPScalingPlan | None,
        class_names: tuple[str, ...] = (),
    ) -> Dataset:
        empty = _Rows(rows.x[:0], rows.y[:0], [])
        if fixed_test is not None:  # a public, fixed split: keep it
            train = empty if self.split == "all-test" else rows
            test = empty if self.split == "none" else fixed_test
        elif self.split == "none":
            train, test = rows, empty
        elif self.split == "all-test":
            train, test = empty, rows
        else:
            held = holdout_mask(rows.records, key=self.key, fraction=self.fraction)
            if held.all() or not held.any():
                raise DataError(
                    f"{self.source}: {len(held)} rows are too few for a train/test split with "
                    f"test_fraction={self.fraction} ({int(held.sum())} held out)"
                )
            keep = np.flatnonzero(~held)
            test_idx = np.flatnonzero(held)
            train = _Rows(rows.x[keep], rows.y[keep], [rows.records[i] for i in keep])
            test = _Rows(rows.x[test_idx], rows.y[test_idx], [])
        return Dataset(
            name,
            np.ascontiguousarray(train.x, dtype=np.float32),
            train.y.astype(np.int64),
            np.ascontiguousarray(test.x, dtype=np.float32),
            test.y.astype(np.int64),
            num_classes,
            tuple(rows.x.shape[1:]),
            train_record_keys=record_keys(train.records) if train.records else _no_keys(train),
            dp_scaling=plan,
            class_names=class_names,
        )


def _no_keys(rows: _Rows) -> np.ndarray | None:
    return np.zeros((0, 32), dtype=np.uint8) if len(rows.y) == 0 else None


# --------------------------------------------------------------------------- built-ins


BREAST_CANCER_SCHEMA = Schema(
    source=Path("<built-in breast_cancer schema>"),
    target="target",
    labels=BREAST_CANCER_LABELS,
    columns=tuple(
        Column(name=n, type="numeric", low=lo, high=hi, centre=c, scale=s)
        for n, c, s, lo, hi in BREAST_CANCER_COLUMNS
    ),
)
"""breast_cancer's declared schema: 30 numeric columns, public centre/scale, clipped."""


def _load_sklearn(name: str) -> tuple[_Rows, int]:
    from sklearn.datasets import load_breast_cancer, load_digits

    if name == "digits":
        bunch = load_digits()
        unit = np.asarray(bunch.data, dtype=np.float64) / 16.0
        x = (unit - np.asarray(DIGITS_MEAN)) / np.asarray(DIGITS_SCALE)
        x = x.reshape(-1, 1, 8, 8)
        num_classes = 10
    else:
        bunch = load_breast_cancer()
        columns = {str(n): bunch.data[:, i].tolist() for i, n in enumerate(bunch.feature_names)}
        columns["target"] = bunch.target.tolist()
        x, _ = BREAST_CANCER_SCHEMA.encode(columns, source=name)
        num_classes = BREAST_CANCER_SCHEMA.num_classes
    y = np.asarray(bunch.target, dtype=np.int64)
    records = array_record_bytes(np.asarray(bunch.data), y)
    return _Rows(x.astype(np.float32), y, records), num_classes


def _load_fashion_mnist(folder: Path) -> tuple[_Rows, _Rows]:
    paths: dict[str, Path] = {}
    for key, stem in _FASHION_FILES.items():
        found = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if found is not None:
            paths[key] = found
    if len(paths) < len(_FASHION_FILES):
        missing = [s for k, s in _FASHION_FILES.items() if k not in paths]
        what = "IDX files" if not paths else "IDX files " + ", ".join(f"{m}[.gz]" for m in missing)
        raise DataError(f"dataset fashion_mnist: {what} not found in {folder} ({_FASHION_HINT})")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{paths[f'x_{split}']}: expected images (N, H, W) and labels (N,), "
                f"got {x.shape} and {y.shape} in {paths[f'y_{split}'].name}"
            )
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{paths[f'y_{split}']}: labels must be 0..9, got {y.min()}..{y.max()}")

    def images(a: np.ndarray) -> np.ndarray:
        scaled = a.astype(np.float32)[:, None] / np.float32(255.0)
        return (scaled - np.float32(FASHION_MNIST_MEAN)) / np.float32(FASHION_MNIST_STD)

    y_tr = arrays["y_train"].astype(np.int64)
    train = _Rows(images(arrays["x_train"]), y_tr, array_record_bytes(arrays["x_train"], y_tr))
    test = _Rows(images(arrays["x_test"]), arrays["y_test"].astype(np.int64), [])
    return train, test


def _scattered(pixels: Dataset) -> Dataset:
    """ScatterNet features (J = 2, L = 8: 81 channels of H/4 x W/4) of the images in
    [0, 1], as Tramer & Boneh computed them. A fixed transform of each image on its own:
    nothing is learned from the data, so it costs no privacy budget."""
    from fedguard.task.scattering import scatter_images

    def features(x: np.ndarray) -> np.ndarray:
        unit = x * np.float32(FASHION_MNIST_STD) + np.float32(FASHION_MNIST_MEAN)
        return scatter_images(unit, scales=2, angles=8)

    x_tr = features(pixels.x_train)
    return Dataset(
        "fashion_mnist_scattering",
        x_tr,
        pixels.y_train,
        features(pixels.x_test),
        pixels.y_test,
        pixels.num_classes,
        tuple(x_tr.shape[1:]),
        train_record_keys=pixels.train_record_keys,
    )
