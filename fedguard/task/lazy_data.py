"""Map-style data sets read record by record: data that does not fit in memory.

Three ready-made ``torch.utils.data.Dataset``s a task's data loading may return; training
(:class:`fedguard.privacy.DPTrainer` with ``data=``) reads only the records each step
sampled, through their batch ``fetch(indices)``:

- :class:`ImageFolder`: ``root/<class>/<file>``, one image per file (PNG/JPEG through
  Pillow, or ``.npy``), decoded on read;
- :class:`ParquetRecords`: a Parquet file read by row group (pyarrow), one column of
  features (raw bytes, or a list) or several numeric columns;
- :class:`NpyRecords`: a ``.npy`` of records read record by record (``pread``), and one of labels.

Each declares the ``shape`` of a record as the model sees it and ``num_classes``; every
record read is checked against both (``DataError`` naming the file and record). The only
preprocessing is ``transform``, applied to ONE record at a time: it sees nothing of the
other records, so changing one record changes one training example, which is what the
DP-SGD analysis assumes. A statistic of the whole data set (a mean to standardise with)
computed from the private records and then used in a transform would break that: compute
it from public knowledge or as a DP release.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from fedguard.errors import DataError, invalid

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "NpyRecords", "ParquetRecords"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
Transform = Callable[[torch.Tensor], torch.Tensor]
Record = tuple[torch.Tensor, int]


def _shape(shape: object) -> tuple[int, ...]:
    if (
        not isinstance(shape, tuple | list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise invalid("shape", allowed="a non-empty tuple of integers >= 1", got=shape)
    return tuple(shape)


def _num_classes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise invalid("num_classes", allowed="an integer >= 2", got=value)
    return value


def _as_float(array: np.ndarray) -> torch.Tensor:
    # Bytes are pixel intensities: scaled to [0, 1], per record, by a public constant.
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy of read-only bytes


class _Records(Dataset[Record]):
    """Shared part: declared shape and classes, the per-record transform, batch reads."""

    def __init__(self, *, shape: object, num_classes: object, transform: Transform | None):
        self.shape = _shape(shape)
        self.num_classes = _num_classes(num_classes)
        if transform is not None and not callable(transform):
            raise invalid("transform", allowed="a callable on one record", got=transform)
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def _raw(self, indices: list[int]) -> list[tuple[np.ndarray, int, str]]:
        """Each record as (array, label, where: a file or row named in errors)."""
        raise NotImplementedError

    def fetch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Records ``indices`` as ``x [k, *shape]`` float32 and ``y [k]`` int64."""
        n = len(self)
        idx = [int(i) for i in indices]
        bad = next((i for i in idx if not 0 <= i < n), None)
        if bad is not None:
            raise IndexError(f"{type(self).__name__}: index {bad} out of range [0, {n})")
        xs, ys = [], []
        for array, label, where in self._raw(idx):
            x = _as_float(array)
            if self.transform is not None:
                x = self.transform(x)
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != self.shape:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(f"{where}: expected a record of shape {self.shape}, got {got}")
            if not 0 <= label < self.num_classes:
                raise DataError(
                    f"{where}: expected a label in [0, {self.num_classes}), got {label}"
                )
            xs.append(x)
            ys.append(label)
        if not xs:
            return torch.empty((0, *self.shape)), torch.empty(0, dtype=torch.int64)
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)

    def __getitem__(self, index: int) -> Record:
        x, y = self.fetch([index])
        return x[0], int(y[0])

    def __getitems__(self, indices: list[int]) -> list[Record]:
        # torch's DataLoader convention: a list of records, collated by the loader.
        x, y = self.fetch(indices)
        return [(x[i], int(y[i])) for i in range(len(indices))]


class ImageFolder(_Records):
    """``root/<class>/<file>``: one image per file, its folder its label.

    Parameters
    ----------
    root : path
        One folder per class. Files are listed once (sorted), decoded when read.
    classes : sequence of str
        The class folders in label order: public, declared, the same on every node. Not
        taken from the folders present: one record of a new class would renumber the
        others' labels (red team). A folder that is not a declared class is refused.
    shape : tuple of int
        ``(channels, height, width)`` of a record as the model sees it (after
        ``transform``). Images are converted to 1 (``L``) or 3 (``RGB``) channels.
    transform : callable, optional
        Per-record: a float32 tensor ``(C, H, W)`` in [0, 1] in, a tensor of ``shape`` out.
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str],
        shape: Sequence[int],
        classes: Sequence[str],
        transform: Transform | None = None,
    ) -> None:
        base = Path(root)
        if not base.is_dir():
            raise DataError(f"{base}: expected a folder with one sub-folder per class")
        names = [str(c) for c in classes]
        undeclared = sorted({p.name for p in base.iterdir() if p.is_dir()} - set(names))
        if undeclared:
            raise DataError(
                f"{base / undeclared[0]}: a folder that is not one of the declared classes "
                f"({', '.join(names)})"
            )
        super().__init__(shape=tuple(shape), num_classes=len(names), transform=transform)
        self.classes = tuple(names)
        self.root = base
        # Relative names as str, not Path objects: ~10x less memory for 10^5 files.
        self._files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(names):
            folder = base / name
            if not folder.is_dir():
                raise DataError(f"{folder}: expected the folder of class {name!r}")
            with os.scandir(folder) as entries:
                found = sorted(
                    e.name
                    for e in entries
                    if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()
                )
            self._files += [f"{name}/{f}" for f in found]
            labels += [label] * len(found)
        if not self._files:
            raise DataError(f"{base}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
        self.labels = torch.tensor(labels, dtype=torch.int64)  # public: the folder layout

    def __len__(self) -> int:
        return len(self._files)

    def path(self, index: int) -> Path:
        """The file of record ``index``."""
        return self.root / self._files[index]

    def _raw(self, indices: list[int]) -> list[tuple[np.ndarray, int, str]]:
        return [
            (self._decode(self.path(i)), int(self.labels[i]), str(self.path(i))) for i in indices
        ]

    def _decode(self, path: Path) -> np.ndarray:
        channels = self.shape[0]
        with _open_unseen(path) as file:
            if path.suffix.lower() == ".npy":
                array = np.load(file, allow_pickle=False)
                return array[None] if array.ndim == 2 and channels == 1 else array
            from PIL import Image  # Pillow only when the folder holds encoded images

            try:
                with Image.open(file) as image:
                    array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
            except OSError as exc:
                raise DataError(f"{path}: expected an image Pillow can decode, got {exc}") from None
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _open_unseen(path: Path) -> BinaryIO:
    """``path`` opened for reading without updating its access time where Linux allows.

    One file per record: the files' access times would list the records each step
    sampled, to anyone who may list the folder, and DP-SGD's amplification by sampling
    assumes the sample stays secret. ``O_NOATIME`` needs the file's owner (or
    CAP_FOWNER); for other files the mount's ``noatime`` option does it.
    """
    try:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            fd = os.open(path, os.O_RDONLY)
    except OSError as exc:  # e.g. deleted since the folder was listed
        raise DataError(f"{path}: expected a readable file, got {exc.strerror}") from None
    return os.fdopen(fd, "rb")


class NpyRecords(_Records):
    """Records in one ``.npy`` file (``[n, *record]``), labels in another (``[n]``).

    The records are read in pieces, one ``pread`` per record at its offset: nothing else
    of the file enters the process (a memory map would count every page touched in its
    resident memory), and nothing is unpickled. The labels, 8 bytes a record, are loaded.
    ``shape`` and ``transform`` as in :class:`ImageFolder` (a record is converted to
    float32 first, ``uint8`` scaled to [0, 1]).
    """

    def __init__(
        self,
        *,
        x_path: str | os.PathLike[str],
        y_path: str | os.PathLike[str],
        shape: Sequence[int],
        num_classes: int,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(shape=tuple(shape), num_classes=num_classes, transform=transform)
        self.x_path, self.y_path = Path(x_path), Path(y_path)
        try:
            with self.x_path.open("rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    stored, fortran, self._dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    stored, fortran, self._dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"format version {version}")
                self._offset = f.tell()
            labels = np.load(self.y_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{x_path}, {y_path}: expected two .npy files, got {exc}") from None
        if fortran or self._dtype.hasobject or len(stored) < 1:
            raise DataError(
                f"{self.x_path}: expected records [n, ...] of numbers in C order, got "
                f"{stored} {self._dtype}{' (Fortran order)' if fortran else ''}"
            )
        self._record_shape = tuple(stored[1:])
        self._record_bytes = int(np.prod(self._record_shape)) * self._dtype.itemsize
        self._n = int(stored[0])
        if labels.shape != (self._n,) or labels.dtype.kind not in "iu":
            raise DataError(
                f"{self.y_path}: expected {self._n} integer labels, got "
                f"{labels.shape} {labels.dtype}"
            )
        self._y = labels

    def __len__(self) -> int:
        return self._n

    def _raw(self, indices: list[int]) -> list[tuple[np.ndarray, int, str]]:
        out = []
        with self.x_path.open("rb") as f:
            for i in indices:
                where = f"{self.x_path} record {i}"
                data = os.pread(
                    f.fileno(), self._record_bytes, self._offset + i * self._record_bytes
                )
                if len(data) != self._record_bytes:
                    raise DataError(
                        f"{where}: expected {self._record_bytes} bytes, got {len(data)}"
                    )
                array = np.frombuffer(data, dtype=self._dtype).reshape(self._record_shape)
                out.append((array, int(self._y[i]), where))
        return out


class ParquetRecords(_Records):
    """A Parquet file read by row group: a step reads only the row groups of its records.

    Parameters
    ----------
    path : path
        Written with small row groups for random access (e.g. ``row_group_size=1024``):
        every row group holding a sampled record is read whole.
    features : str or sequence of str
        One column of raw bytes (decoded as ``dtype``) or of lists, reshaped to ``shape``;
        or several numeric columns, stacked in this order.
    label : str
        The integer label column.
    shape, num_classes, transform
        As in :class:`NpyRecords`.
    dtype : str
        NumPy dtype of a bytes column (default ``uint8``).
    stored_shape : tuple of int, optional
        The shape a bytes or list value is reshaped to before ``transform`` (default
        ``shape``).
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        features: str | Sequence[str],
        label: str,
        shape: Sequence[int],
        num_classes: int,
        transform: Transform | None = None,
        dtype: str = "uint8",
        stored_shape: Sequence[int] | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        super().__init__(shape=tuple(shape), num_classes=num_classes, transform=transform)
        self.path = Path(path)
        self.features = [features] if isinstance(features, str) else list(features)
        self.label = label
        self.dtype = np.dtype(dtype)
        self.stored_shape = self.shape if stored_shape is None else _shape(tuple(stored_shape))
        try:
            self._file = pq.ParquetFile(self.path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path}: expected a Parquet file, got {exc}") from None
        names = set(self._file.schema_arrow.names)
        missing = [c for c in (*self.features, label) if c not in names]
        if missing:
            raise DataError(f"{self.path}: expected columns {missing}, got {sorted(names)}")
        meta = self._file.metadata
        self._starts = [0]
        for g in range(meta.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(g).num_rows)

    def __len__(self) -> int:
        return self._starts[-1]

    def _raw(self, indices: list[int]) -> list[tuple[np.ndarray, int, str]]:
        by_group: dict[int, list[int]] = {}
        for i in indices:
            by_group.setdefault(bisect.bisect_right(self._starts, i) - 1, []).append(i)
        found: dict[int, tuple[np.ndarray, int, str]] = {}
        for g, members in by_group.items():
            table = self._file.read_row_group(g, columns=[*self.features, self.label])
            local = [i - self._starts[g] for i in members]
            labels = table.column(self.label).take(local).to_pylist()
            columns = [table.column(c).take(local).to_pylist() for c in self.features]
            for k, i in enumerate(members):
                where = f"{self.path} row {i}"
                if not isinstance(labels[k], int):
                    raise DataError(f"{where}: expected an integer label, got {labels[k]!r}")
                found[i] = (self._record([c[k] for c in columns], where), labels[k], where)
        return [found[i] for i in indices]

    def _record(self, values: list[Any], where: str) -> np.ndarray:
        try:
            if len(values) > 1:
                return np.asarray(values, dtype=np.float32)
            (value,) = values
            if isinstance(value, bytes):
                return np.frombuffer(value, dtype=self.dtype).reshape(self.stored_shape)
            return np.asarray(value, dtype=np.float32).reshape(self.stored_shape)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{where}: expected a record of {self.stored_shape} {self.dtype}, got {exc}"
            ) from None
