"""The node's app-bundle check on bundles built by Flower's own builder (the real-process
attack is tests/deploy/test_app_bundle.py)."""

import io
import zipfile

import pytest
from flwr.cli.build import build_fab_from_files

from fedguard.client.app_bundle import CLIENT_APP, bundle_refusal
from fedguard.task_identity import TaskIdentity, bundle_task_table, installed_task

BASE = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedguard-federation"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedguard"

[tool.flwr.app.components]
serverapp = "fedguard.server.deploy_app:app"
clientapp = "{clientapp}"

[tool.flwr.app.config]
config-path = ""
"""

MINE = TaskIdentity(name="fedguard.task", version="0.1.0", digest="sha256:" + "ab" * 32)


def fab(pyproject: str, **files: bytes) -> bytes:
    content, _meta = build_fab_from_files({"pyproject.toml": pyproject.encode(), **files})
    return content


def ours(clientapp: str = CLIENT_APP, task: TaskIdentity = MINE) -> str:
    return BASE.format(clientapp=clientapp) + bundle_task_table(task)


def test_the_bundle_fedguard_server_builds_is_accepted():
    assert bundle_refusal(fab(ours()), run_id=7, installed=MINE) is None


def test_the_installed_task_identity_is_stable_and_names_the_task_package():
    a, b = installed_task(), installed_task()
    assert a == b and a.name == "fedguard.task" and a.digest.startswith("sha256:")


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        (lambda: fab(ours(), **{"evil.py": b"import os"}), "carries files of its own (evil.py)"),
        (lambda: fab(ours(), **{"pkg/__init__.py": b""}), "carries files of its own (pkg/"),
        (lambda: fab(ours(clientapp="evil:app")), "its ClientApp is 'evil:app'"),
        (lambda: fab(BASE.format(clientapp=CLIENT_APP)), "its task is 'None'"),
        (
            lambda: fab(ours(task=TaskIdentity(name="x.task", version="0.1.0", digest="d"))),
            "its task is 'x.task'",
        ),
        (
            lambda: fab(ours(task=TaskIdentity(name=MINE.name, version="9.9", digest="d"))),
            "its task-version is '9.9'",
        ),
        (
            lambda: fab(ours(task=TaskIdentity(name=MINE.name, version="0.1.0", digest="d"))),
            "its task-digest is 'd'",
        ),
        (lambda: b"not a zip at all", "not a readable zip"),
        (lambda: _zip({"README.md": b"hi"}), "carries files of its own (README.md)"),
        (lambda: _zip({".info/CONTENT": b""}), "no pyproject.toml"),
        (
            lambda: _zip_entries(
                [("pyproject.toml", ours().encode()), ("pyproject.toml", b"[x]\n")]
            ),
            "holds pyproject.toml more than once",
        ),
        (lambda: _zip({"pyproject.toml": b"x" * 70_000}), "no pyproject.toml of at most 64 KiB"),
        (lambda: _zip({"pyproject.toml": b"[[[nope"}), "not valid TOML"),
    ],
)
def test_anything_else_is_refused_in_one_line_naming_the_run(bundle, expected):
    reason = bundle_refusal(bundle(), run_id=42, installed=MINE)
    assert reason is not None and reason.startswith("run 42 refused before anything of it")
    assert expected in reason and "\n" not in reason


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _zip_entries(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # Flower installs a bundle under apps/<publisher>.<name>.<version>.<hash>, unchecked:
        # a version with ../ wrote a server-chosen pyproject.toml anywhere (red team).
        (('version = "1.0.0"', 'version = "1.0.0/../../../../tmp/x"'), "its app version is"),
        (('publisher = "fedguard"', 'publisher = "../evil"'), "its app publisher is"),
        (('name = "fedguard-federation"', 'name = "other-app"'), "its app name is"),
        (("dependencies = []", 'dependencies = ["evil==1.0"]'), "names dependencies"),
        (('config-path = ""', 'config-path = ""\nextra = "x"'), "the key 'extra'"),
    ],
)
def test_a_bundle_naming_another_app_folder_or_more_is_refused(change, expected):
    old, new = change
    text = ours()
    assert old in text
    refusal = bundle_refusal(fab(text.replace(old, new, 1)), run_id=5, installed=MINE)
    assert refusal is not None and expected in refusal, refusal
