"""The journal of what a node released under secure aggregation (client/released.py).

It is the node's only memory of which update went into which secure sum, so it must read
back exactly, refuse anything it did not write with one ``DataError`` line naming the file
(never another exception, never a hang), and be written owner-only.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from fuzzing import FUZZ, mutated, only
from hypothesis import given
from hypothesis import strategies as st

from fedguard.client.released import (
    MAX_RECORDS,
    Journal,
    MaskedRecord,
    Session,
    read_journal,
    update_digest,
    write_journal,
)
from fedguard.errors import DataError
from fedguard.files import RELEASED_FILE

H = "ab" * 32


def _journal() -> Journal:
    return Journal(
        masked=[MaskedRecord(run="demo/0123", server_round=3, session=H, update="cd" * 32)],
        session=Session(
            run="demo/0123",
            server_round=4,
            id="ef" * 32,
            update="01" * 32,
            replies={"advertise": (H, b"\x08\x01keys"), "masked-input": (H, bytes(range(256)))},
        ),
    )


def _bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "real" / RELEASED_FILE
    write_journal(path, _journal())
    return path.read_bytes()


def test_the_journal_reads_back_exactly_and_is_owner_only(tmp_path: Path):
    path = tmp_path / "state" / RELEASED_FILE
    assert read_journal(path) == Journal()  # none yet: nothing was released
    write_journal(path, _journal())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_journal(path) == _journal()
    assert _journal().session is not None and _journal().session.masked


def test_only_the_newest_masked_records_are_kept(tmp_path: Path):
    path = tmp_path / RELEASED_FILE
    records = [
        MaskedRecord(run="r", server_round=i, session=H, update=f"{i:064x}")
        for i in range(MAX_RECORDS + 5)
    ]
    write_journal(path, Journal(masked=records))
    assert read_journal(path).masked == records[-MAX_RECORDS:]


def test_the_update_digest_tells_updates_apart_by_bytes_shape_and_dtype():
    a = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    assert update_digest(a) == update_digest([a[0].copy()])
    assert update_digest(a) != update_digest([a[0].reshape(3, 2)])
    assert update_digest(a) != update_digest([a[0].astype(np.float64)])
    b = [a[0].copy()]
    b[0][0, 0] = np.nextafter(b[0][0, 0], 1, dtype=np.float32)
    assert update_digest(a) != update_digest(b)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"", "not JSON"),
        (b"[]", "expected format"),
        (b'{"format": "fedguard-secagg-released/1", "masked": {}}', "masked: expected a list"),
        (
            b'{"format": "fedguard-secagg-released/1", "masked": [{"run": "r", "round": -1, '
            b'"session": "' + H.encode() + b'", "update": "' + H.encode() + b'"}]}',
            "round: expected an integer >= 0",
        ),
        (
            b'{"format": "fedguard-secagg-released/1", "masked": [], "session": {"run": "r", '
            b'"round": 1, "id": "x", "update": "y", "abandoned": false, "replies": {}}}',
            "session id: expected 64 hex digits",
        ),
    ],
)
def test_a_journal_it_did_not_write_is_refused_naming_the_file(tmp_path: Path, text, fragment):
    path = tmp_path / RELEASED_FILE
    path.write_bytes(text)
    with pytest.raises(DataError, match=fragment) as err:
        read_journal(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_journal_of_random_bytes(raw: bytes, tmp_path: Path):
    path = tmp_path / RELEASED_FILE
    path.write_bytes(raw)
    only(DataError, lambda: read_journal(path))


@FUZZ
@given(data=st.data())
def test_journal_mutated(data: st.DataObject, tmp_path: Path):
    path = tmp_path / RELEASED_FILE
    path.write_bytes(data.draw(mutated(_bytes(tmp_path))))
    got = only(DataError, lambda: read_journal(path))
    assert got is None or isinstance(got, Journal)
