"""One reader of safetensors headers (fedguard.safetensors_header), used by the server's
checkpoint and by a node's stored reply: hostile headers are one-line DataErrors in both."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from fedguard.client.stored_reply import read_stored_reply
from fedguard.errors import DataError
from fedguard.safetensors_header import safetensors_metadata
from fedguard.server.checkpoint import load_checkpoint


def _with_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


HOSTILE = {
    "empty": b"",
    "short": b"\x01\x02\x03",
    "length past the end": struct.pack("<Q", 2**63) + b"{}",
    "nested 100000 deep": _with_header(b"[" * 100_000 + b"]" * 100_000),
    "not JSON": _with_header(b"{nope"),
    "a list": _with_header(b"[1, 2]"),
    "metadata a list": _with_header(json.dumps({"__metadata__": [1]}).encode()),
    "metadata not strings": _with_header(json.dumps({"__metadata__": {"round": 2}}).encode()),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused_in_one_line(case: str, tmp_path: Path) -> None:
    data = HOSTILE[case]
    with pytest.raises(ValueError) as exc:
        safetensors_metadata(data)
    assert "\n" not in str(exc.value)
    for reader in (load_checkpoint, lambda p: read_stored_reply(p, key="k")):
        path = tmp_path / "file.safetensors"
        path.write_bytes(data)
        with pytest.raises(DataError) as err:
            reader(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_metadata_read_without_loading_tensors() -> None:
    data = st_save({"w": np.zeros(3, np.float32)}, metadata={"format": "x", "round": "2"})
    assert safetensors_metadata(data) == {"format": "x", "round": "2"}
    assert safetensors_metadata(st_save({"w": np.zeros(1, np.float32)})) == {}
