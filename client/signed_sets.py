"""The survivor sets a node has signed, one per session context, for good (#14.6).

The consistency round is sound only if an honest node signs ONE survivor set per session
context: two different sets that each reached the quorum q share 2q - n > c signers. The
context is a digest of what the server chose (run, round, parameters, names by slot), so
a server that re-runs a round with the same parameters (a node retrains for a re-asked
round: new keys, a new session) reuses it. Were "one set" kept per session, the server
could collect a quorum on one set in one session, another set in another, and present
each to half the holders of a third session: seed shares from some, key shares from the
others, hence one node's update. So each signature is recorded here, appended and fsynced
before it leaves the node, and a different set under a context already signed is refused.

``state-dir/secagg-signed.jsonl`` (0600), one line per context: ``{"context": hex,
"survivors": hex}`` (a digest of the sorted set). Never pruned: about 150 bytes a round.
A torn last line (a crash mid-append) is dropped, and cut off before the next append:
its signature never left the node. Any other unreadable line stops secure aggregation on
the node (it could no longer tell what it signed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from fedguard.errors import DataError
from fedguard.files import SIGNED_FILE

__all__ = ["SIGNED_FILE", "record_signed", "signed_set", "survivors_digest"]


def survivors_digest(survivors: Iterable[int]) -> str:
    ordered = ",".join(str(s) for s in sorted(set(survivors)))
    return hashlib.sha256(b"fedguard/v1/secagg-survivors\x00" + ordered.encode()).hexdigest()


def signed_set(path: Path, context: bytes) -> str | None:
    """The digest of the set signed under ``context``, or None if none was."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return None
    found: str | None = None
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            ctx, digest = row["context"], row["survivors"]
            if not (isinstance(ctx, str) and isinstance(digest, str)):
                raise TypeError("context and survivors must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:  # a torn last line: that signature was never sent
                break
            raise DataError(
                f"{path}: line {i + 1} unreadable ({' '.join(str(exc).split())[:80]}); this "
                "node takes part in no secure round until it is restored (it records the "
                "survivor sets it signed)"
            ) from None
        if ctx == context.hex():
            found = found or digest
    return found


def record_signed(path: Path, context: bytes, survivors: Iterable[int]) -> None:
    """Append (fsync) that ``survivors`` was signed under ``context``: before it is sent.

    Called under the node's budget lock. A torn tail left by an earlier crash is cut off
    first (it would otherwise become an unreadable middle line), every byte is written
    (a short write is retried, not ignored) and the line is read back before the signature
    may leave: a record the file does not hold would let a second set be signed.
    """
    digest = survivors_digest(survivors)
    line = json.dumps({"context": context.hex(), "survivors": digest}).encode() + b"\n"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, max(0, size - 65536), os.SEEK_SET)
            tail = os.read(fd, 65536)
            if b"\n" in tail:
                end = size - len(tail) + tail.rfind(b"\n") + 1
            else:  # no line end in the last 64 KiB: a torn line only if it is the whole file
                end = 0 if len(tail) == size else size
            if end != size:
                os.ftruncate(fd, end)  # a torn line: that signature never left the node
                size = end
        os.lseek(fd, size, os.SEEK_SET)
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(f"{path}: could not append the signed survivor set")
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if signed_set(path, context) != digest:
        raise OSError(f"{path}: the signed survivor set did not read back; not signing")
