"""A record's key is its values, not how a file writes them (the per-record budget is
indexed by it). An auditor re-exported the same records as `%.2f` and the node trained them
again with a fresh budget; a renumbered id column, a uint8 -> float32 cast or an extra
channel axis did the same. Each of those now keeps every key."""

from pathlib import Path

import numpy as np

from fedguard.task import load_dataset

SCHEMA = """
[target]
column = "y"
labels = ["no", "yes"]
[columns.id]
type = "identifier"
[columns.a]
type = "numeric"
range = [0, 10]
[columns.note]
type = "ignore"
"""


def _keys(path: Path, schema: Path | None = None, target: str | None = None) -> set[bytes]:
    ds = load_dataset(name=str(path), seed=0, split="none", schema=schema, target=target)
    assert ds.train_record_keys is not None
    return {bytes(k) for k in ds.train_record_keys}


def test_the_same_values_written_otherwise_are_the_same_records(tmp_path: Path):
    schema = tmp_path / "schema.toml"
    schema.write_text(SCHEMA)
    rows = [(1.5, "no"), (2.0, "yes"), (7.25, "no")]
    base = tmp_path / "base.csv"
    base.write_text("id,a,note,y\n" + "".join(f"{i},{a},x,{y}\n" for i, (a, y) in enumerate(rows)))
    keys = _keys(base, schema)
    assert len(keys) == 3
    rewritten = tmp_path / "rewritten.csv"
    rewritten.write_text(
        "y,note,a,id\n"  # columns reordered, rows reversed, ids renumbered, notes changed
        + "".join(f"{y},other, {a:+.4e},{100 - i:05d}\n" for i, (a, y) in enumerate(reversed(rows)))
    )
    assert _keys(rewritten, schema) == keys
    changed = tmp_path / "changed.csv"
    changed.write_text(base.read_text().replace("7.25", "7.26"))
    assert len(_keys(changed, schema) & keys) == 2  # a changed value is another record


def test_a_table_without_schema_reads_numbers_as_values(tmp_path: Path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x,y\n1.5,0\n2,1\n")
    b.write_text("x,y\n1.50,0\n2.0e0,1\n")
    assert _keys(a, target="y") == _keys(b, target="y")


def test_arrays_of_one_image_in_any_dtype_byte_order_or_channel_axis(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, 4, 4)).astype(np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    variants = {
        "u8": x,
        "f32": x.astype(np.float32),
        "channel": x[:, None].astype(np.float32),
        "big": x.astype(">f8"),
    }
    keys = []
    for name, arr in variants.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=arr, y=y)
        keys.append(_keys(path))
    assert all(k == keys[0] for k in keys) and len(keys[0]) == 6


def test_a_demo_share_is_decided_per_record():
    """Audit: the demo's nodes took IID shares of one file by a seeded shuffle; appending
    one record moved 43 of node 0's 407 records. By keyed hash it moves none."""
    from fedguard.task.records import record_keys, record_partition

    rng = np.random.default_rng(0)
    rows = [rng.bytes(16) for _ in range(1001)]
    keys = record_keys(rows)
    before = record_partition(keys[:1000], parts=3, seed=0)
    after = record_partition(keys, parts=3, seed=0)
    assert (after[:1000] == before).all()
    assert set(np.bincount(before)) and min(np.bincount(before)) > 250
    assert (record_partition(keys, parts=3, seed=1) != after).any()  # the seed picks shares
