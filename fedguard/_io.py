"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a process restarted after a crash) sees either the old file or the new one,
never a half-written one. Used for every ledger, accountant state, checkpoint and result.
A write that fails (a full disk, a file-size limit, a failed rename) leaves the previous
file as it was, removes its temp file, and raises ``OSError`` naming the target.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from fedguard.errors import DataError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "private_folder",
    "read_jsonl",
]

_log = logging.getLogger(__name__)

_PRIVATE_DIR = 0o700


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically; the previous file survives any failure.

    Folders it has to create are 0700 when ``mode`` gives no access to group or others
    (a private file's new folders are private too), else they follow the umask.
    """
    path = Path(path)
    try:
        _make_folders(path.parent, private=not mode & 0o077)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _failed(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _failed(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, mode: int = 0o644) -> None:
    """Text flavour of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | Path, obj: Any, *, mode: int = 0o644) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN/inf are refused (not valid JSON)."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", mode=mode
    )


def _make_folders(folder: Path, *, private: bool) -> None:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(mode=_PRIVATE_DIR if private else 0o777, exist_ok=True)
        if private:
            new.chmod(_PRIVATE_DIR)  # mkdir's mode is filtered by the umask; be explicit


def _failed(path: Path, exc: OSError) -> OSError:
    """``exc`` restated for ``path`` (same errno, hence the same OSError subclass)."""
    reason = exc.strerror or str(exc)
    text = f"cannot write {path}: {reason}; the previous file (if any) is unchanged"
    return OSError(exc.errno, text) if exc.errno is not None else OSError(text)


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, read tolerantly: ``[]`` if there is no file.

    A torn LAST line (a crash mid-append, or a copy cut short) is dropped with a warning
    naming the file: it is what an append-only file looks like after a crash. A damaged line
    anywhere else is not a crash's doing, so it is a ``DataError`` naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = text.split("\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            rows.append(obj)
            continue
        if all(not rest.strip() for rest in lines[number:]):
            _log.warning("%s: torn last line %d dropped (%d bytes)", path, number, len(line))
            break
        raise DataError(f"{path}: line {number}: not a JSON object; fix or remove that line")
    return rows


def private_folder(path: str | Path, *, key: str) -> Path:
    """Make ``path`` (a state folder fedguard owns) private: 0700, its files 0600.

    A folder the operator created beforehand keeps its mode under ``mkdir(exist_ok=True)``
    (0755: a SQLite database or a log inside readable by every local user), and files written
    by Flower follow the umask (0644). So this tightens what is already there, the folder
    and the regular files directly in it, and callers set ``os.umask(0o077)`` before
    starting processes that write there. ``key`` names the config key in errors.

    Raises
    ------
    ConfigError
        The path is not a folder, or belongs to another user (then it is not ours to change).
    """
    from fedguard.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} = {str(path)!r}: expected a folder, found a file")
    try:
        _make_folders(path, private=True)
        info = path.stat()
        if info.st_uid != os.getuid():
            raise ConfigError(
                f"{key} = {str(path)!r}: owned by uid {info.st_uid}, not by this user "
                f"(uid {os.getuid()}); fedguard keeps its state only in folders it owns"
            )
        path.chmod(_PRIVATE_DIR)
        for child in path.iterdir():
            mode = child.lstat().st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                child.chmod(stat.S_IMODE(mode) & 0o700)
            elif stat.S_ISDIR(mode) and mode & 0o077:
                child.chmod(_PRIVATE_DIR)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{key} = {str(path)!r}: cannot make it private ({reason})") from None
    return path
