"""The record of signed survivor sets (#14.6), against what a disk does: short writes, a
torn last line, a garbled middle line. Real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedguard.client import signed_sets
from fedguard.client.signed_sets import record_signed, signed_set, survivors_digest
from fedguard.errors import DataError

A, B = b"\x01" * 32, b"\x02" * 32


def test_a_short_write_is_completed_not_ignored(tmp_path: Path, monkeypatch):
    """Second red team: `os.write` writing part of the line (a nearly full disk, a file
    size limit) left a torn record while the signature still went out; the torn line was
    then read as "never sent" and a second set could be signed under the same context."""
    real = os.write
    monkeypatch.setattr(signed_sets.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    path = tmp_path / signed_sets.SIGNED_FILE
    record_signed(path, A, (3, 1, 2))
    assert signed_set(path, A) == survivors_digest((1, 2, 3))


def test_a_write_that_makes_no_progress_refuses_to_sign(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(signed_sets.os, "write", lambda fd, data: 0)
    with pytest.raises(OSError, match="could not append"):
        record_signed(tmp_path / signed_sets.SIGNED_FILE, A, (1, 2))


def test_a_torn_last_line_is_cut_before_the_next_record(tmp_path: Path):
    """Second red team: the torn tail of a crash became a middle line at the next append,
    and from then on the node refused every secure round (denial of service)."""
    path = tmp_path / signed_sets.SIGNED_FILE
    record_signed(path, A, (1, 2))
    with path.open("ab") as f:
        f.write(b'{"context": "0202')  # a crash mid-append
    assert signed_set(path, A) == survivors_digest((1, 2))  # the torn tail is dropped
    record_signed(path, B, (1, 2, 3))
    assert signed_set(path, B) == survivors_digest((1, 2, 3))
    assert signed_set(path, A) == survivors_digest((1, 2))
    assert b"0202\n" not in path.read_bytes() and path.read_bytes().endswith(b"}\n")


def test_a_garbled_middle_line_stops_secure_aggregation(tmp_path: Path):
    path = tmp_path / signed_sets.SIGNED_FILE
    record_signed(path, A, (1, 2))
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(DataError, match="line 1 unreadable"):
        signed_set(path, B)
