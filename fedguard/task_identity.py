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
from importlib import util
from pathlib import Path

import fedguard

__all__ = ["BUILTIN_TASK", "TaskIdentity", "bundle_task_table", "installed_task"]

BUILTIN_TASK = "fedguard.task"
"""The task package every built-in data set and model lives in."""


@dataclass(frozen=True, kw_only=True)
class TaskIdentity:
    name: str  # the task's import name
    version: str  # fedguard's version (the task ships with it)
    digest: str  # "sha256:" of the package's sources, relative path and bytes of each


def installed_task(name: str = BUILTIN_TASK) -> TaskIdentity:
    """The identity of the task package ``name`` as installed in this interpreter."""
    spec = util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"task package {name!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        data = path.read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
    return TaskIdentity(name=name, version=fedguard.__version__, digest="sha256:" + h.hexdigest())


def bundle_task_table(task: TaskIdentity) -> str:
    """The ``[tool.fedguard]`` table `fedguard server` writes into its bundle's pyproject."""
    return (
        "[tool.fedguard]\n"
        f'task = "{task.name}"\n'
        f'task-version = "{task.version}"\n'
        f'task-digest = "{task.digest}"\n'
    )
