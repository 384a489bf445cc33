"""A node runs only code installed on it: every run's app bundle is checked before use.

Flower gives a SuperNode, for each run, the run's app bundle (FAB: a zip of the app's
files) and its ClientApp runner puts that folder on the import path and imports the
component its pyproject names. Whatever Python a bundle carried would run next to the
node's records, whatever fedguard's privacy does. So a node accepts a run only if its
bundle is what `fedguard server` builds: a ``pyproject.toml`` (and Flower's ``.info/CONTENT``
manifest) and nothing else, naming fedguard's installed ClientApp and exactly the task
installed on this node (name, version and digest of its code,
:mod:`fedguard.task_identity`). Anything else is refused before it is installed or
imported (``fedguard.deploy.flower.patch_supernode_bundle_check`` calls
:func:`bundle_refusal` where the SuperNode fetches the bundle), with one line naming the
run and what differed; the server receives that line as the node's error reply.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from fedguard._toml import toml_loads
from fedguard.deploy_config import CONFIG_KEY
from fedguard.errors import ConfigError
from fedguard.task_identity import (
    APP_NAME,
    APP_PUBLISHER,
    APP_VERSION,
    TaskIdentity,
    installed_task,
)

__all__ = ["CLIENT_APP", "bundle_refusal"]

CLIENT_APP = "fedguard.client.app:app"
"""The only ClientApp component a node runs."""

_ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
_MAX_PYPROJECT = 64 * 1024  # ours is ~1 KB; a larger one is not ours (nor a zip bomb's)


def bundle_refusal(
    content: bytes, *, run_id: int, installed: TaskIdentity | None = None
) -> str | None:
    """Why this node refuses the run whose bundle is ``content``; None to accept it."""
    installed = installed or installed_task()
    head = f"run {run_id} refused before anything of it was imported"
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            infos = fab.infolist()
            names = sorted(i.filename for i in infos)
            if len(set(names)) != len(names):
                # zipfile and Flower read the LAST entry of a name: a second pyproject.toml
                # after ours would be the one Flower loads (an auditor's bypass).
                twice = sorted({n for n in names if names.count(n) > 1})
                return f"{head}: its app bundle holds {', '.join(twice)} more than once"
            extra = [n for n in names if n not in _ALLOWED_FILES]
            if extra:
                shown = ", ".join(extra[:5]) + (
                    f" and {len(extra) - 5} more" if len(extra) > 5 else ""
                )
                return (
                    f"{head}: its app bundle carries files of its own ({shown}); a node runs "
                    "only the fedguard code installed on it"
                )
            info = next((i for i in infos if i.filename == "pyproject.toml"), None)
            if info is None or info.file_size > _MAX_PYPROJECT:
                return f"{head}: its app bundle has no pyproject.toml of at most 64 KiB"
            text = fab.read(info).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, ValueError) as exc:
        return f"{head}: its app bundle is not a readable zip ({' '.join(str(exc).split())[:80]})"
    try:
        doc = toml_loads(text, source=Path("pyproject.toml"))
    except ConfigError as exc:
        return f"{head}: {exc}"
    tool = _table(doc, "tool")
    why = _identity_refusal(doc)
    if why is not None:
        return f"{head}: {why}"
    components = _table(_table(_table(tool, "flwr"), "app"), "components")
    clientapp = components.get("clientapp")
    if clientapp != CLIENT_APP:
        return f"{head}: its ClientApp is {clientapp!r}, not fedguard's installed {CLIENT_APP!r}"
    ours = _table(tool, "fedguard")
    for key, mine in (
        ("task", installed.name),
        ("task-version", installed.version),
        ("task-digest", installed.digest),
    ):
        theirs = ours.get(key)
        if theirs != mine:
            return (
                f"{head}: its {key} is {str(theirs)[:80]!r}, this node has {mine!r} installed "
                "(the server and this node must run the same fedguard task code)"
            )
    return None


def _identity_refusal(doc: dict[str, Any]) -> str | None:
    """Why the bundle is not the app `fedguard server` submits: its publisher, name and
    version (Flower builds the folder it installs the bundle into from them, unchecked:
    a ``../`` would write elsewhere), its dependencies, its run config keys."""
    project = _table(doc, "project")
    app = _table(_table(_table(doc, "tool"), "flwr"), "app")
    for key, value, mine in (
        ("publisher", app.get("publisher"), APP_PUBLISHER),
        ("name", project.get("name"), APP_NAME),
        ("version", project.get("version"), APP_VERSION),
    ):
        if value != mine:
            return f"its app {key} is {str(value)[:80]!r}, not {mine!r}"
    if project.get("dependencies", []) != []:
        return "its app names dependencies of its own; a node installs nothing"
    config = _table(app, "config")
    if set(config) - {CONFIG_KEY}:
        extra = sorted(set(config) - {CONFIG_KEY})[0]
        return f"its app config has the key {extra[:80]!r}; only {CONFIG_KEY!r} is known"
    return None


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}
