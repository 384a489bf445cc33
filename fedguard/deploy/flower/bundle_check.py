"""Workaround 12: a SuperNode checks a run's app bundle before anything of it is stored.

A SuperNode installs and imports whatever code a run's app bundle (FAB) carries. The
SuperNode's ``_pull_and_store_message`` is wrapped so that the bundle is checked (a
callable the node's launcher passes in) as soon as it is fetched, before the run is
stored or any task created; a refused run gets an error reply (``INVALID_FAB``) with the
reason, and nothing of it is imported. The SuperNode entry point refuses to start
without this check.
"""

from __future__ import annotations

import functools
import inspect
import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedguard._toml import toml_loads
from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.supernode_poll import SUPERNODE_MODULE, supernode_module
from fedguard.errors import FedguardError

__all__ = ["NAME", "TARGET", "BundleCheck", "check", "installed", "patch_supernode_bundle_check"]

NAME = "bundle-check"
TARGET = f"{SUPERNODE_MODULE}._pull_and_store_message"

BundleCheck = Callable[[bytes, int], "str | None"]
"""``check(fab_content, run_id)``: why the node refuses the run, or None to accept it."""

_NEEDED = ("_insert_message", "Message", "Error", "ErrorCode", "log")
# The keyword arguments the wrapper intercepts (checked against the signature by check()).
_KWARGS = ("receive", "get_fab", "get_run", "state", "object_store")

# The wrapper this process installed and the check it calls. Not attributes of the
# wrapper: a later wrapper (the polling's functools.wraps) would copy them.
_STATE: dict[str, Any] = {"wrapper": None, "check": None}


def check() -> None:
    """Raise FedguardError unless the SuperNode module still has what the wrapper uses."""
    module = supernode_module()
    original = getattr(module, "_pull_and_store_message", None)
    if not callable(original) or not all(hasattr(module, n) for n in _NEEDED):
        raise FedguardError(f"{SUPERNODE_MODULE}._pull_and_store_message changed; stale patch")
    params = inspect.signature(inspect.unwrap(original)).parameters
    if not all(k in params for k in _KWARGS):
        raise FedguardError(f"{SUPERNODE_MODULE}._pull_and_store_message's arguments changed")


def installed() -> bool:
    """Whether this process's SuperNode module checks bundles (without importing it)."""
    fn = getattr(sys.modules.get(SUPERNODE_MODULE), "_pull_and_store_message", None)
    while fn is not None:  # through the wrappers laid over ours
        if fn is _STATE["wrapper"]:
            return True
        fn = getattr(fn, "__wrapped__", None)
    return False


def _run_record_refusal(run: Any, run_id: int, content: bytes) -> str | None:
    """Why the run record does not name the bundle it carries. The ClientApp process
    finds the folder it loads from the record's ``fab_id``/``fab_version``, not from the
    checked bundle, so a record naming another app (or ``../``) would load another
    folder's pyproject. The bundle's own identity is pinned by the node's check."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            doc = toml_loads(
                fab.read("pyproject.toml").decode("utf-8"), source=Path("pyproject.toml")
            )
        app, project = doc["tool"]["flwr"]["app"], doc["project"]
        expected = (f"{app['publisher']}/{project['name']}", str(project["version"]))
    except (KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile, FedguardError):
        expected = None
    got = (getattr(run, "fab_id", None), getattr(run, "fab_version", None))
    if expected is not None and got == expected:
        return None
    return (
        f"run {run_id} refused before anything of it was imported: its run record names "
        f"app {str(got[0])[:80]!r} version {str(got[1])[:40]!r}, not the bundle it carries"
    )


def patch_supernode_bundle_check(check_bundle: BundleCheck) -> None:
    """Check every run's app bundle where the SuperNode fetches it. Idempotent: a second
    call replaces the check."""
    check()
    _STATE["check"] = check_bundle
    if installed():
        return
    module = supernode_module()
    original = module._pull_and_store_message

    class _RefusedError(Exception):
        pass

    @functools.wraps(original)
    def pull_and_store(*args: Any, **kwargs: Any) -> Any:
        receive, get_fab, get_run = kwargs["receive"], kwargs["get_fab"], kwargs["get_run"]
        seen: list[Any] = []
        runs: dict[int, Any] = {}

        def get_kept_run(run_id: int) -> Any:
            runs[run_id] = get_run(run_id)
            return runs[run_id]

        def receive_and_keep() -> Any:
            got = receive()
            if got is not None:
                seen.append(got[0])
            return got

        def get_checked_fab(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            reason = _STATE["check"](fab.content, run_id) or _run_record_refusal(
                runs.get(run_id), run_id, fab.content
            )
            if reason is not None:
                raise _RefusedError(reason)
            return fab

        kwargs.update(receive=receive_and_keep, get_fab=get_checked_fab, get_run=get_kept_run)
        try:
            return original(*args, **kwargs)
        except _RefusedError as refused:
            message = seen[-1]
            module.log(40, "%s", refused)  # ERROR: one line in the node's log
            error = module.Error(module.ErrorCode.INVALID_FAB, str(refused))
            module._insert_message(
                module.Message(error, reply_to=message), kwargs["state"], kwargs["object_store"]
            )
            return message.metadata.run_id

    _STATE["wrapper"] = pull_and_store
    replace_attr(NAME, module, "_pull_and_store_message", pull_and_store)
