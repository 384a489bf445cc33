"""Data sets every part of fedguard trains on: built-ins and the user's own files.

Built-ins: ``digits`` and ``breast_cancer`` ship with scikit-learn (nothing is
downloaded); ``fashion_mnist`` is read from the IDX files of Debian's
``dataset-fashion-mnist`` package, and ``fashion_mnist_scattering`` is the same images as
ScatterNet features (:mod:`fedguard.task.scattering`). A path ending ``.csv``,
``.parquet`` or ``.npz`` loads the user's own data. Every loader returns a
:class:`Dataset` whose features are float32 and whose labels are int64 class ids
``0..num_classes-1``.

Standardisation statistics always come from the training split only, so nothing about
the test split leaks into training.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedguard.errors import DataError, invalid

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "Dataset",
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

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
"""Per-pixel mean/std of the Fashion-MNIST training images scaled to [0, 1]."""

_FILE_SUFFIXES = (".csv", ".parquet", ".npz")
_DATASET_ALLOWED = (*DATASET_NAMES, "a .csv/.parquet/.npz path")
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_FASHION_HINT = "install Debian's package: apt-get install -y dataset-fashion-mnist"
# IDX type byte -> big-endian element type (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
# A constant feature has std 0; dividing by a tiny floor would blow any test value that
# differs from the constant up to ~1e6, so such features are only centred (scale 1),
# as scikit-learn's StandardScaler does.
_STD_FLOOR = 1e-6


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Dataset:
    """A train/test split ready for training.

    ``x_*`` are float32 with shape ``(N, *input_shape)``: ``(N, C, H, W)`` for images,
    ``(N, F)`` for tabular data. ``y_*`` are int64 class ids in ``0..num_classes-1``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[1:] != self.input_shape or y.shape != (x.shape[0],):
                raise ValueError(
                    f"Dataset {self.name}: {split} arrays x{x.shape}/y{y.shape} do not match "
                    f"input_shape {self.input_shape}"
                )

    @property
    def is_image(self) -> bool:
        """Whether examples are ``(C, H, W)`` images (else flat feature vectors)."""
        return len(self.input_shape) == 3


def load_dataset(
    *,
    name: str,
    seed: int,
    target: str | None = None,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
) -> Dataset:
    """Load a built-in data set or a ``.csv``/``.parquet``/``.npz`` file.

    Parameters
    ----------
    name
        One of :data:`DATASET_NAMES`, or a path ending ``.csv``, ``.parquet`` or ``.npz``.
    seed
        Seeds the stratified train/test split (not used by ``fashion_mnist``, which has
        a fixed split, nor by an ``.npz`` that carries ``x_test``/``y_test``).
    target
        Label column of a CSV/Parquet file (required there, refused elsewhere).
    test_fraction
        Share of the rows held out for testing, in (0, 1).
    data_dir
        Folder of the Fashion-MNIST IDX files (default :data:`FASHION_MNIST_DIR`).

    Raises
    ------
    ConfigError
        Unknown name, bad ``seed``/``test_fraction``, missing or unknown ``target``.
    DataError
        A file is missing, unreadable or malformed.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise invalid("--seed", allowed="an integer in [0, 2**32)", got=seed)
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not 0.0 < test_fraction < 1.0
    ):
        raise invalid("--test-fraction", allowed="a number in (0, 1)", got=test_fraction)
    suffix = Path(name).suffix.lower()
    if name not in DATASET_NAMES and suffix not in _FILE_SUFFIXES:
        raise invalid("--dataset", allowed=_DATASET_ALLOWED, got=name)
    if suffix in (".csv", ".parquet"):
        return _load_table(Path(name), target=target, seed=seed, test_fraction=test_fraction)
    if target is not None:
        raise invalid(
            "--target",
            allowed="no --target (only .csv/.parquet files have label columns)",
            got=target,
            source=name if suffix else None,
        )
    if suffix == ".npz":
        return _load_npz(Path(name), seed=seed, test_fraction=test_fraction)
    if name == "fashion_mnist":
        return _load_fashion_mnist(data_dir or FASHION_MNIST_DIR)
    if name == "fashion_mnist_scattering":
        return _scattered(_load_fashion_mnist(data_dir or FASHION_MNIST_DIR))
    return _load_sklearn(name, seed=seed, test_fraction=test_fraction)


# --------------------------------------------------------------------------- built-ins


def _load_sklearn(name: str, *, seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_breast_cancer, load_digits

    if name == "digits":
        bunch = load_digits()
        x = bunch.data.reshape(-1, 1, 8, 8) / 16.0
    else:
        bunch = load_breast_cancer()
        x = bunch.data
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, seed=seed, test_fraction=test_fraction, source=name)
    x_tr, x_te = _standardise(x_tr, x_te)
    return Dataset(name, x_tr, y_tr, x_te, y_te, int(y.max()) + 1, tuple(x.shape[1:]))


def _load_fashion_mnist(folder: Path) -> Dataset:
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

    x_tr = images(arrays["x_train"])
    return Dataset(
        "fashion_mnist",
        x_tr,
        arrays["y_train"].astype(np.int64),
        images(arrays["x_test"]),
        arrays["y_test"].astype(np.int64),
        10,
        tuple(x_tr.shape[1:]),
    )


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
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into an array of its native type.

    Raises
    ------
    DataError
        The file is missing/unreadable, its header is not IDX, or its data is truncated
        or followed by extra bytes. The message names the file.
    """
    raw = _read_bytes(path)
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = header + math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        problem = "truncated" if len(raw) < need else "has trailing bytes"
        raise DataError(
            f"{path}: IDX data {problem}: shape {shape} needs {need} bytes, file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


# --------------------------------------------------------------------------- user files


def _load_table(path: Path, *, target: str | None, seed: int, test_fraction: float) -> Dataset:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pa_pq

    def read(fh: IO[bytes]) -> Any:
        if path.suffix.lower() == ".csv":
            return pa_csv.read_csv(fh)
        return pa_pq.read_table(fh)

    table = _with_file(path, read, errors=(pa.ArrowException,))
    columns = list(table.column_names)
    if target is None or target not in columns:
        raise invalid("--target", allowed=columns, got=target, source=path)
    features = [c for c in columns if c != target]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    matrix = []
    for col in features:
        column = table.column(col)
        kind = column.type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise DataError(f"{path}: feature column {col!r} must be numeric, got type {kind}")
        if column.null_count:
            raise DataError(
                f"{path}: feature column {col!r} has {column.null_count} missing values"
            )
        values = column.to_numpy().astype(np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{path}: feature column {col!r} has NaN or infinite values")
        matrix.append(values)
    labels = table.column(target)
    if labels.null_count:
        raise DataError(f"{path}: target column {target!r} has {labels.null_count} missing values")
    classes, y = np.unique(labels.to_numpy(zero_copy_only=False), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{path}: target column {target!r} needs >= 2 classes, got {len(classes)}")
    x = np.stack(matrix, axis=1)
    x_tr, x_te, y_tr, y_te = _split(
        x, y.astype(np.int64), seed=seed, test_fraction=test_fraction, source=str(path)
    )
    x_tr, x_te = _standardise(x_tr, x_te)
    return Dataset(str(path), x_tr, y_tr, x_te, y_te, len(classes), (x.shape[1],))


def _load_npz(path: Path, *, seed: int, test_fraction: float) -> Dataset:
    def read(fh: IO[bytes]) -> dict[str, np.ndarray]:
        # allow_pickle=False: a pickled array would run code from the file.
        with np.load(fh, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    arrays = _with_file(path, read, errors=(ValueError, EOFError))
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: needs arrays 'x' and 'y', found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: 'x_test' and 'y_test' must come together, found {sorted(arrays)}")
    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    for xk, yk in pairs:
        x, y = arrays[xk], arrays[yk]
        if x.ndim not in (2, 3, 4) or y.shape != (len(x),):
            raise DataError(
                f"{path}: {xk!r} must be (N, F), (N, H, W) or (N, C, H, W) and {yk!r} (N,), "
                f"got {x.shape} and {y.shape}"
            )
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
            raise DataError(f"{path}: {xk!r} must hold finite numbers (dtype {x.dtype})")
        if x.ndim == 3:  # (N, H, W): one channel
            arrays[xk] = x[:, None]
    y_all = np.concatenate([arrays[yk] for _, yk in pairs])
    if np.issubdtype(y_all.dtype, np.integer) and y_all.size and y_all.min() >= 0:
        num_classes = int(y_all.max()) + 1  # already class ids: keep them
        mapped = [arrays[yk].astype(np.int64) for _, yk in pairs]
    else:
        classes, inverse = np.unique(y_all, return_inverse=True)
        num_classes = len(classes)
        mapped = np.split(inverse.astype(np.int64), [len(arrays["y"])])
    if num_classes < 2:
        raise DataError(f"{path}: 'y' needs >= 2 classes, got {num_classes}")
    x = arrays["x"].astype(np.float32)
    if len(pairs) == 2:
        x_tr, y_tr, x_te, y_te = x, mapped[0], arrays["x_test"].astype(np.float32), mapped[1]
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise DataError(
                f"{path}: 'x_test' examples {x_te.shape[1:]} differ from 'x' {x.shape[1:]}"
            )
    else:
        x_tr, x_te, y_tr, y_te = _split(
            x, mapped[0], seed=seed, test_fraction=test_fraction, source=str(path)
        )
    return Dataset(str(path), x_tr, y_tr, x_te, y_te, num_classes, tuple(x_tr.shape[1:]))


# --------------------------------------------------------------------------- helpers


def _read_bytes(path: Path) -> bytes:
    return _with_file(path, lambda fh: fh.read(), errors=())


def _with_file(path: Path, read: Any, *, errors: tuple[type[BaseException], ...]) -> Any:
    """Open ``path`` ourselves so OS errors carry a clean reason; wrap parser errors."""
    try:
        with path.open("rb") as fh:
            return read(fh)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except errors as exc:
        reason = " ".join(str(exc).split())  # parsers put newlines in their messages
        raise DataError(f"{path}: cannot parse ({reason})") from None


def _split(
    x: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_test = math.ceil(test_fraction * n)  # how scikit-learn rounds
    if n_test < 1 or n - n_test < 1:
        raise DataError(
            f"{source}: {n} rows are too few for a train/test split "
            f"with test_fraction={test_fraction}"
        )
    counts = np.bincount(y)
    k = int((counts > 0).sum())
    # Stratify when every class can appear on both sides; else a plain seeded split.
    stratify = y if counts[counts > 0].min() >= 2 and min(n_test, n - n_test) >= k else None
    parts = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=stratify)
    return parts[0], parts[1], parts[2], parts[3]


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale every feature (pixel) with the TRAIN split's mean and std."""
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std = np.where(std < _STD_FLOOR, 1.0, std)
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )
