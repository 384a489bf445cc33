"""A node runs only the user task code installed on it (#16.3): the digest a node compares
covers the user's task module, so a server built with another version of it is refused."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_files

from fedguard.client.app_bundle import CLIENT_APP, bundle_refusal
from fedguard.task_identity import BUILTIN_TASK, bundle_task_table, installed_task

PYPROJECT = f"""
[project]
name = "fedguard-federation"
version = "1.0.0"

[tool.flwr.app]
publisher = "fedguard"

[tool.flwr.app.components]
serverapp = "fedguard.server.deploy_app:app"
clientapp = "{CLIENT_APP}"
"""

TASK_V1 = """
from torch import nn
from fedguard.task.api import Task, TaskArrays

def model(*, input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes)

task = Task(name="bank", model=model, load=lambda r: None, input_shape=(3,), num_classes=2)
"""


def install(root: Path, source: str) -> None:
    pkg = root / "fg_bank_task"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(source)
    importlib.invalidate_caches()


@pytest.fixture
def user_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fg_bank_task")]:
        del sys.modules[name]


def bundle(table: str) -> bytes:
    content, _ = build_fab_from_files({"pyproject.toml": (PYPROJECT + table).encode()})
    return content


def test_the_same_user_task_is_accepted(user_path: Path) -> None:
    install(user_path, TASK_V1)
    mine = installed_task("fg_bank_task.tasks:task")
    assert mine.name == "fg_bank_task.tasks:task"
    assert mine.digest != installed_task(BUILTIN_TASK).digest
    assert bundle_refusal(bundle(bundle_task_table(mine)), run_id=3, installed=mine) is None


def test_a_server_with_another_version_of_the_user_task_is_refused(user_path: Path) -> None:
    # The server was built with v1 of the bank's task; the node has v2 installed (one
    # line differs): same task name, same fedguard version, different code.
    install(user_path, TASK_V1)
    server_side = installed_task("fg_bank_task.tasks:task")
    install(user_path, TASK_V1.replace("nn.Linear(input_shape[0]", "nn.Linear(1 * input_shape[0]"))
    node_side = installed_task("fg_bank_task.tasks:task")
    refusal = bundle_refusal(bundle(bundle_task_table(server_side)), run_id=3, installed=node_side)
    assert refusal is not None
    assert refusal.startswith("run 3 refused before anything of it was imported: its task-digest")
    assert node_side.digest in refusal and "\n" not in refusal


def test_a_server_naming_another_task_is_refused(user_path: Path) -> None:
    install(user_path, TASK_V1)
    node_side = installed_task("fg_bank_task.tasks:task")
    builtin = installed_task(BUILTIN_TASK)
    refusal = bundle_refusal(bundle(bundle_task_table(builtin)), run_id=4, installed=node_side)
    assert refusal is not None and "its task is 'fedguard.task'" in refusal


def test_a_new_file_in_the_user_package_changes_the_digest(user_path: Path) -> None:
    install(user_path, TASK_V1)
    before = installed_task("fg_bank_task.tasks:task").digest
    (user_path / "fg_bank_task" / "helpers.py").write_text("X = 1\n")
    assert installed_task("fg_bank_task.tasks:task").digest != before


def test_a_data_file_of_the_user_package_is_covered(user_path: Path) -> None:
    # A task reading its schema from its package: another schema is another task.
    install(user_path, TASK_V1)
    (user_path / "fg_bank_task" / "schema.toml").write_text('[target]\ncolumn = "y"\n')
    before = installed_task("fg_bank_task.tasks:task").digest
    (user_path / "fg_bank_task" / "schema.toml").write_text('[target]\ncolumn = "z"\n')
    assert installed_task("fg_bank_task.tasks:task").digest != before
