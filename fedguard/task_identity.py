"""Which task code is installed here: a name, a version and a digest of its source.

A deployed node runs only code installed on it (the node trusts the server for
nothing, not for code). The server names the task its run was built for in the app bundle
it submits (``[tool.fedguard]`` of the bundle's pyproject); a node accepts the run only if
that is exactly the task installed on the node (:mod:`fedguard.client.app_bundle`). The
digest covers the source bytes of every module of the task package, so a node and a server
that run different task code (another release, a local edit) are told apart, not only
different version strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

import fedguard

__all__ = [
    "APP_NAME",
    "APP_PUBLISHER",
    "APP_VERSION",
    "BUILTIN_TASK",
    "TaskIdentity",
    "bundle_task_table",
    "installed_task",
]

# The Flower app `fedguard server` submits, as its bundle's pyproject names it. Flower builds
# the folder it installs a bundle into from these three values (and the run record's copy
# of them), so a node accepts exactly these: another value could name any folder.
APP_PUBLISHER = "fedguard"
APP_NAME = "fedguard-federation"
APP_VERSION = "1.0.0"

BUILTIN_TASK = "fedguard.task"
"""The task package every built-in data set and model lives in."""


@dataclass(frozen=True, kw_only=True)
class TaskIdentity:
    name: str  # the built-in task package, or a user task's "package.module:attribute"
    version: str  # fedguard's version, and the user task's distribution version
    digest: str  # "sha256:" of the task code's sources, relative path and bytes of each


def installed_task(name: str = BUILTIN_TASK) -> TaskIdentity:
    """The identity of the task ``name`` as installed in this interpreter.

    ``name`` is the built-in task package or a user task ``package.module:attribute``
    (:mod:`fedguard.task.api`). A user task's digest covers fedguard's task package AND
    every file of the user's top-level package (its data files too), or a single module's
    own file, so a server naming another version of the user's code is refused, not only
    another name.
    """
    h = hashlib.sha256()
    _hash_sources(h, BUILTIN_TASK, _sources(BUILTIN_TASK))
    if name == BUILTIN_TASK:
        return TaskIdentity(name=name, version=fedguard.__version__, digest=_hex(h))
    top = name.split(":", 1)[0].split(".", 1)[0]
    _hash_sources(h, top, _sources(top, every_file=True))
    version = f"{fedguard.__version__}; {top} {_distribution_version(top)}"
    return TaskIdentity(name=name, version=version, digest=_hex(h))


def _hex(h: Any) -> str:
    return "sha256:" + str(h.hexdigest())


def _sources(module: str, *, every_file: bool = False) -> tuple[Path, list[Path]]:
    """The folder and the ``.py`` files (``every_file``: every file, so the data files a
    user's task reads, a schema, are covered too) of the installed package ``module``; a
    single module: its own file only."""
    spec = util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(f"task package {module!r} is not installed")
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        found = root.rglob("*") if every_file else root.rglob("*.py")
        files = [p for p in found if p.is_file() and "__pycache__" not in p.parts]
        return root, sorted(files)
    if spec.origin is None or not spec.origin.endswith(".py"):
        raise ModuleNotFoundError(f"task module {module!r} has no Python source to identify")
    origin = Path(spec.origin)
    return origin.parent, [origin]


def _hash_sources(h: Any, label: str, found: tuple[Path, list[Path]]) -> None:
    root, files = found
    h.update(label.encode() + b"\0")
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        data = path.read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)


def _distribution_version(top: str) -> str:
    dists = metadata.packages_distributions().get(top, [])
    for dist in dists:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "(not an installed distribution)"


def bundle_task_table(task: TaskIdentity) -> str:
    """The ``[tool.fedguard]`` table `fedguard server` writes into its bundle's pyproject."""
    return (
        "[tool.fedguard]\n"
        f'task = "{task.name}"\n'
        f'task-version = "{task.version}"\n'
        f'task-digest = "{task.digest}"\n'
    )
