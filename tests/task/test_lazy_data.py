"""fedguard.task.lazy_data: image folders, Parquet row groups and .npy files read record
by record, checked against their declared shape and classes; neighbouring data sets through
each stay one training example apart (#16.4, the attack of #13 point 1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

from fedguard.errors import ConfigError, DataError
from fedguard.privacy import Accountant, DPTrainer
from fedguard.task.lazy_data import ImageFolder, NpyRecords, ParquetRecords

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the:UserWarning",
)

SHAPE = (1, 4, 4)
N = 30
C = 1.0


def _images(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 100, size=(n, *SHAPE), dtype=np.uint8), np.arange(n) % 2


def _write(fmt: str, root: Path, x: np.ndarray, y: np.ndarray) -> object:
    """Write records (x, y) in one of the lazy formats and open them."""
    root.mkdir(parents=True)
    if fmt in ("png", "npy-files"):
        for k, (img, label) in enumerate(zip(x, y, strict=True)):
            folder = root / ("cat", "dog")[int(label)]
            folder.mkdir(exist_ok=True)
            if fmt == "png":
                Image.fromarray(img[0]).save(folder / f"{k:04d}.png")
            else:
                np.save(folder / f"{k:04d}.npy", img)
        return ImageFolder(root=root, shape=SHAPE, classes=["cat", "dog"])
    if fmt == "npy":
        np.save(root / "x.npy", x)
        np.save(root / "y.npy", y.astype(np.int64))
        return NpyRecords(x_path=root / "x.npy", y_path=root / "y.npy", shape=SHAPE, num_classes=2)
    table = pa.table({"img": [r.tobytes() for r in x], "label": y.astype(np.int64)})
    pq.write_table(table, root / "d.parquet", row_group_size=7)
    return ParquetRecords(
        path=root / "d.parquet", features="img", label="label", shape=SHAPE, num_classes=2
    )


FORMATS = ["png", "npy-files", "npy", "parquet"]


def _in_folder_order(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # ImageFolder lists class by class, files sorted.
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


@pytest.mark.parametrize("fmt", FORMATS)
def test_records_read_back_as_written(tmp_path, fmt):
    x, y = _images(0)
    data = _write(fmt, tmp_path / "d", x, y)
    if fmt in ("png", "npy-files"):
        x, y = _in_folder_order(x, y)
    assert len(data) == N
    bx, by = data.fetch([5, 0, 29, 5])
    assert bx.dtype == torch.float32 and tuple(bx.shape) == (4, *SHAPE)
    assert torch.equal(bx, torch.from_numpy(x[[5, 0, 29, 5]].astype(np.float32) / 255))
    assert by.tolist() == y[[5, 0, 29, 5]].tolist()
    one_x, one_y = data[7]
    assert torch.equal(one_x, bx.new_tensor(x[7] / 255)) and one_y == int(y[7])
    assert [int(r[1]) for r in data.__getitems__([1, 2])] == y[[1, 2]].tolist()


def test_parquet_reads_only_the_row_groups_of_the_sampled_records(tmp_path, monkeypatch):
    x, y = _images(1)
    data = _write("parquet", tmp_path / "d", x, y)
    groups: list[int] = []
    real = data._file.read_row_group
    monkeypatch.setattr(
        data._file, "read_row_group", lambda g, **kw: groups.append(g) or real(g, **kw)
    )
    data.fetch([8, 1, 9, 29])  # row groups of 7 rows: 1, 0, 1, 4
    assert sorted(groups) == [0, 1, 4]


def test_a_record_of_another_shape_or_class_is_named(tmp_path):
    x, y = _images(2)
    root = tmp_path / "d"
    _write("npy-files", root, x, y)
    np.save(root / "dog" / "bad.npy", np.zeros((1, 5, 4), dtype=np.uint8))
    data = ImageFolder(root=root, shape=SHAPE, classes=["cat", "dog"])
    bad = next(i for i in range(len(data)) if data.path(i) == root / "dog" / "bad.npy")
    with pytest.raises(DataError, match=r"bad\.npy: expected a record of shape \(1, 4, 4\), got"):
        data.fetch([0, bad])
    np.save(tmp_path / "y.npy", np.full(N, 2))
    np.save(tmp_path / "x.npy", x)
    records = NpyRecords(
        x_path=tmp_path / "x.npy", y_path=tmp_path / "y.npy", shape=SHAPE, num_classes=2
    )
    with pytest.raises(DataError, match=r"x\.npy record 3: expected a label in \[0, 2\), got 2"):
        records.fetch([3])


def test_options_are_checked_with_one_line(tmp_path):
    x, y = _images(3)
    root = tmp_path / "d"
    _write("png", root, x, y)
    with pytest.raises(ConfigError, match=r"^shape: expected a non-empty tuple"):
        ImageFolder(root=root, shape=(1, 0, 4), classes=["cat", "dog"])
    with pytest.raises(DataError, match=r"bird: expected the folder of class 'bird'"):
        ImageFolder(root=root, shape=SHAPE, classes=["cat", "dog", "bird"])
    _write("parquet", tmp_path / "p", x, y)
    with pytest.raises(DataError, match=r"d\.parquet: expected columns \['pixels'\]"):
        ParquetRecords(
            path=tmp_path / "p" / "d.parquet",
            features="pixels",
            label="label",
            shape=SHAPE,
            num_classes=2,
        )


def test_classes_fix_the_label_order_and_the_transform_sees_one_record(tmp_path):
    x, y = _images(4)
    root = tmp_path / "d"
    _write("png", root, x, y)
    seen: list[tuple[int, ...]] = []

    def flip(record: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(record.shape))
        return record.flip(-1)

    data = ImageFolder(root=root, shape=SHAPE, classes=["dog", "cat"], transform=flip)
    assert data.classes == ("dog", "cat") and data.labels[0] == 0
    assert data.path(0).parent.name == "dog"
    bx, _ = data.fetch([0, 1, 2])
    assert seen == [SHAPE] * 3
    plain = ImageFolder(root=root, shape=SHAPE, classes=["dog", "cat"])
    assert torch.equal(bx, plain.fetch([0, 1, 2])[0].flip(-1))


# The attack: neighbouring data sets (one record changed to an outlier, one removed)
# through each lazy format; one DP step at sample rate 1 with the same model. DP-SGD's
# guarantee needs the released sums of clipped gradients to differ by at most 2C / C.


class WholeSetStandardised(torch.utils.data.Dataset):
    """What a lazy data set must not do: standardise each record with statistics of all."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        everything = inner.fetch(list(range(len(inner))))[0]
        self.mean, self.std = everything.mean(), everything.std()

    def __len__(self) -> int:
        return len(self.inner)

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.inner.fetch(indices)
        return (x - self.mean) / self.std * 100, y


def _released_sum(data: object) -> torch.Tensor:
    torch.manual_seed(0)  # only the initial weights, identical for every variant
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    trainer = DPTrainer(model=model)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    lr, n = 1.0, len(data)
    trainer.train(
        data=data,
        epochs=1,
        batch_size=n,  # sample rate 1: every record, one step
        lr=lr,
        noise_multiplier=1e-9,  # > 0 as DP-SGD needs; negligible so the sums compare
        max_grad_norm=C,
        accountant=Accountant(method="rdp"),
        generator=torch.Generator().manual_seed(1),
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return (before - after) * n / lr  # the clipped sum DPOptimizer divided by n


def _neighbours(fmt: str, tmp_path: Path, wrap=lambda d: d) -> dict[str, torch.Tensor]:
    x, y = _images(5)
    changed = x.copy()
    changed[3] = 255  # an outlier: every pixel at its maximum
    return {
        "base": _released_sum(wrap(_write(fmt, tmp_path / "base", x, y))),
        "changed": _released_sum(wrap(_write(fmt, tmp_path / "changed", changed, y))),
        "removed": _released_sum(wrap(_write(fmt, tmp_path / "removed", x[1:], y[1:]))),
    }


def _worst(sums: dict[str, torch.Tensor]) -> float:
    """The largest distance over its bound (2C changed, C removed): <= 1 is DP-SGD's case."""
    changed = float((sums["base"] - sums["changed"]).norm()) / (2 * C)
    removed = float((sums["base"] - sums["removed"]).norm()) / C
    return max(changed, removed)


@pytest.mark.parametrize("fmt", FORMATS)
def test_neighbouring_data_sets_stay_one_clipped_gradient_apart(tmp_path, fmt):
    sums = _neighbours(fmt, tmp_path)
    assert _worst(sums) <= 1 + 1e-4
    assert (sums["base"] - sums["changed"]).norm() > 0  # the outlier was trained on


def test_the_check_catches_a_whole_set_statistic(tmp_path):
    # One outlier moves every record's standardised value: the same check fails.
    assert _worst(_neighbours("npy", tmp_path, wrap=WholeSetStandardised)) > 1 + 1e-2


# The attack: which records a step sampled must stay secret (amplification by sampling).
# With one file per record, the files' access times would list them to anyone who may
# stat the folder.


def _stale_atimes(root: Path) -> dict[Path, float]:
    old = 1_500_000_000.0  # 2017: relatime updates an access time older than the mtime
    for path in root.rglob("*.png"):
        os.utime(path, (old, path.stat().st_mtime))
    return {p: p.stat().st_atime for p in root.rglob("*.png")}


def test_reading_a_record_does_not_reveal_it_through_the_access_time(tmp_path):
    x, y = _images(6)
    root = tmp_path / "d"
    _write("png", root, x, y)
    before = _stale_atimes(root)
    # The attack works on this file system: a plain read shows in the access time.
    probe = next(iter(before))
    probe.read_bytes()
    if probe.stat().st_atime == before[probe]:
        pytest.skip("this file system does not record access times (noatime)")
    before = _stale_atimes(root)
    data = ImageFolder(root=root, shape=SHAPE, classes=["cat", "dog"])
    data.fetch([0, 5, 7])
    _released_sum(data)  # a DP step over every record
    touched = [p for p, t in before.items() if p.stat().st_atime != t]
    assert touched == []


def test_a_truncated_or_fortran_npy_is_named(tmp_path):
    x, y = _images(7)
    np.save(tmp_path / "y.npy", y.astype(np.int64))
    np.save(tmp_path / "x.npy", x)
    full = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(full[: -SHAPE[1] * SHAPE[2]])  # the last record short
    records = NpyRecords(
        x_path=tmp_path / "x.npy", y_path=tmp_path / "y.npy", shape=SHAPE, num_classes=2
    )
    assert records.fetch([0])[0].shape == (1, *SHAPE)
    with pytest.raises(DataError, match=rf"x\.npy record {N - 1}: expected 16 bytes, got 0"):
        records.fetch([N - 1])
    np.save(tmp_path / "x.npy", np.asfortranarray(x))
    with pytest.raises(DataError, match=r"x\.npy: expected records \[n, \.\.\.\] .* \(Fortran"):
        NpyRecords(x_path=tmp_path / "x.npy", y_path=tmp_path / "y.npy", shape=SHAPE, num_classes=2)


def test_the_class_list_is_declared_not_read_from_the_folders(tmp_path: Path):
    """Labels from the folders present let one record of a new class renumber every
    later class (and num_classes) on that node (red team): the classes are declared, and
    a folder that is not one of them is refused in one line."""
    x, y = _images(2)
    root = tmp_path / "d"
    _write("npy-files", root, x, y)
    with pytest.raises(TypeError):
        ImageFolder(root=root, shape=SHAPE)  # type: ignore[call-arg]
    declared = ImageFolder(root=root, shape=SHAPE, classes=["cat", "dog"])
    (root / "bird").mkdir()  # one record of a class the federation did not declare
    np.save(root / "bird" / "0.npy", x[0])
    with pytest.raises(DataError, match=r"bird: a folder that is not one of the declared"):
        ImageFolder(root=root, shape=SHAPE, classes=["cat", "dog"])
    assert declared.num_classes == 2
