"""The declared feature schema: every column type, missing values, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedguard.errors import ConfigError, DataError
from fedguard.task import load_dataset, load_schema

SCHEMA = """
[target]
column = "default"
labels = ["No", "Yes"]
[columns.age]
type = "numeric"
range = [18, 100]
missing = 45
[columns.balance]
type = "numeric"
centre = 1000
scale = 500
clip = [0, 5000]
[columns.student]
type = "categorical"
levels = ["No", "Yes", "Part"]
missing = "No"
[columns.owner]
type = "binary"
values = ["n", "y"]
[columns.customer_id]
type = "identifier"
[columns.note]
type = "ignore"
"""

CSV = """customer_id,age,balance,student,owner,note,default
c1,18,1000,No,n,hello,No
c2,100,1500,Yes,y,,Yes
c3,,9000,Part,n,x,No
c4,10,-20,NA,y,x,Yes
"""


def _files(tmp_path: Path, schema: str = SCHEMA, csv: str = CSV) -> tuple[Path, Path]:
    (tmp_path / "s.toml").write_text(schema)
    (tmp_path / "d.csv").write_text(csv)
    return tmp_path / "s.toml", tmp_path / "d.csv"


def test_every_column_type_encodes_each_row_with_public_constants(tmp_path: Path) -> None:
    schema_path, data = _files(tmp_path)
    schema = load_schema(schema_path)
    assert schema.input_shape == (1 + 1 + 3 + 1,) and schema.num_classes == 2
    ds = load_dataset(name=str(data), seed=0, schema=schema_path, split="none")
    expected = [
        # age: clip to [18, 100], scale to [-1, 1]; balance: clip [0, 5000], (v-1000)/500;
        # student: one-hot No/Yes/Part; owner: n=0, y=1; id and note dropped.
        [-1.0, 0.0, 1, 0, 0, 0],
        [1.0, 1.0, 0, 1, 0, 1],
        [(45 - 59) / 41, 8.0, 0, 0, 1, 0],  # missing age -> 45; balance clipped to 5000
        [-1.0, -2.0, 1, 0, 0, 1],  # age 10 -> 18; balance -20 -> 0; missing student -> No
    ]
    np.testing.assert_allclose(ds.x_train, expected, atol=1e-6)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0, 1])


def test_digest_is_stable_and_changes_with_any_setting(tmp_path: Path) -> None:
    path, _ = _files(tmp_path)
    a = load_schema(path).digest()
    (tmp_path / "copy.toml").write_text(SCHEMA)
    assert load_schema(tmp_path / "copy.toml").digest() == a  # path does not matter
    (tmp_path / "other.toml").write_text(SCHEMA.replace("range = [18, 100]", "range = [18, 99]"))
    assert load_schema(tmp_path / "other.toml").digest() != a
    assert a.startswith("sha256:") and len(a) == 7 + 64


def test_dp_columns_are_clipped_but_left_unscaled(tmp_path: Path) -> None:
    schema = SCHEMA.replace("range = [18, 100]\nmissing = 45", 'range = [18, 100]\nscaling = "dp"')
    csv = CSV.replace("c3,,9000", "c3,50,9000")
    path, data = _files(tmp_path, schema, csv)
    plan = load_schema(path).dp_plan()
    assert plan is not None and plan.columns == (0,) and plan.ranges == ((18.0, 100.0),)
    ds = load_dataset(name=str(data), seed=0, schema=path, split="none")
    np.testing.assert_allclose(ds.x_train[:, 0], [18, 100, 50, 18])
    assert ds.dp_scaling == plan


@pytest.mark.parametrize(
    ("csv_change", "needle"),
    [
        (
            ("c1,18,1000,No,n,hello,No", "c1,18,1000,Maybe,n,hello,No"),
            "row 1: column 'student' is 'Maybe'",
        ),
        (
            ("c2,100,1500,Yes,y,,Yes", "c2,100,1500,Yes,y,,Perhaps"),
            "row 2: target 'default' is 'Perhaps'",
        ),
        (
            ("c1,18,1000,No,n,hello,No", "c1,18,1000,No,,hello,No"),
            "row 1: column 'owner' is missing",
        ),
        (
            ("c1,18,1000,No,n,hello,No", "c1,18,lots,No,n,hello,No"),
            "row 1: column 'balance' must be a finite",
        ),
        (("note,default", "note,default,extra"), "column 'extra' is not declared"),
    ],
)
def test_bad_values_name_file_row_and_value(
    tmp_path: Path, csv_change: tuple[str, str], needle: str
) -> None:
    csv = CSV.replace(*csv_change)
    if "extra" in csv:
        csv = "\n".join(line + ",1" if i else line for i, line in enumerate(csv.splitlines()))
    schema_path, data = _files(tmp_path, csv=csv)
    with pytest.raises(DataError) as info:
        load_dataset(name=str(data), seed=0, schema=schema_path, split="none")
    assert str(info.value).startswith(f"{data}: ") and needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (
            ('type = "numeric"\nrange = [18, 100]', 'type = "number"\nrange = [18, 100]'),
            "columns.age.type",
        ),
        (("range = [18, 100]", "range = [100, 18]"), "columns.age.range"),
        (("range = [18, 100]", 'range = [18, 100]\nlevels = ["a"]'), "columns.age.levels"),
        (("scale = 500", "scale = 0"), "columns.balance.scale"),
        (('levels = ["No", "Yes", "Part"]', 'levels = ["No", "No"]'), "columns.student.levels"),
        (('missing = "No"', 'missing = "Maybe"'), "columns.student.missing"),
        (('labels = ["No", "Yes"]', 'labels = ["No"]'), "target.labels"),
        (('column = "default"', "column = 3"), "target.column"),
        (("[target]", "colour = 1\n[target]"), "colour"),
        (
            ("centre = 1000\nscale = 500", 'centre = 1000\nscale = 500\nscaling = "dp"'),
            "columns.balance.scaling",
        ),
    ],
)
def test_bad_schema_keys_are_one_line_errors_naming_file_and_key(
    tmp_path: Path, change: tuple[str, str], key: str
) -> None:
    assert change[0] in SCHEMA
    path, _ = _files(tmp_path, SCHEMA.replace(*change, 1))
    with pytest.raises(ConfigError) as info:
        load_schema(path)
    assert str(info.value).startswith(f"{path}: {key}: expected "), str(info.value)
    assert "\n" not in str(info.value)


def test_schema_is_refused_for_arrays_and_must_agree_with_target(tmp_path: Path) -> None:
    path, data = _files(tmp_path)
    with pytest.raises(ConfigError, match=r"^--schema: expected no schema"):
        load_dataset(name="digits", seed=0, schema=path)
    with pytest.raises(ConfigError, match="--target: expected no --target, or the schema's"):
        load_dataset(name=str(data), seed=0, schema=path, target="age", split="none")
