"""Resume survives its own files (#15 point 6): flipped bits in a checkpoint are named, a torn
last line of ``metrics.jsonl`` is dropped and logged, damage elsewhere is one line naming the
file and line."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from fedguard._io import read_jsonl
from fedguard.errors import DataError
from fedguard.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def _checkpoint(path: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(30, 40)).astype(np.float32), rng.normal(size=40).astype(np.float32)]
    save_checkpoint(
        path,
        Checkpoint(server_round=4, config_digest="d1", weights=weights, velocity=weights[1:]),
    )
    return weights


def test_a_checkpoint_round_trips(tmp_path: Path):
    path = tmp_path / "checkpoint.safetensors"
    weights = _checkpoint(path)
    got = load_checkpoint(path)
    assert got is not None and got.server_round == 4
    for a, b in zip(got.weights, weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("where", [0.5, 0.9, -3])
def test_a_flipped_bit_in_the_weights_is_detected_and_named(tmp_path: Path, where: float):
    """The attack: one bit of one weight flipped on disk. Safetensors itself loads it
    silently (the header is intact), so the resumed model would be silently wrong."""
    path = tmp_path / "checkpoint.safetensors"
    _checkpoint(path)
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    at = int(header + (len(data) - header) * where) if where > 0 else len(data) + int(where)
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"checkpoint .*checksum") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_torn_last_line_is_dropped_and_logged(tmp_path: Path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.6}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"round": 3, "accur'
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        got = read_jsonl(path)
    assert got == rows
    assert "torn last line" in caplog.text and str(path) in caplog.text


def test_a_damaged_line_before_the_last_is_one_line_naming_file_and_line(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(DataError, match=rf"{path}: line 2: not a JSON object"):
        read_jsonl(path)


def test_a_missing_file_reads_as_no_rows(tmp_path: Path):
    assert read_jsonl(tmp_path / "none.jsonl") == []
