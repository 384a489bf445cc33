"""Real-process tests carry the ``deploy`` marker (#20.6), so ``-m deploy`` / ``-m "not
deploy"`` select exactly the tests that start a federation's processes.

A test starts one when its body, or a module-level helper it calls (followed through the
module), or a fixture defined in its module or a conftest.py, does any of: run ``fedguard
server``/``client``/``demo`` (``fedguard_cmd(...)`` or ``[python, "-m", "fedguard", ...]``),
start Flower's ``flower-superlink``/``flower-supernode``/``flwr`` (stock, or patched:
``python -m fedguard.deploy.flower superlink``), use the ``processes``
fixture (tests/deploy/conftest.py) or the deploy-overhead benchmark's ``Deployment``. Read
from the source with ``ast``; nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
COMMANDS = {"server", "client", "demo"}
FLOWER_TOOLS = {"flower-superlink", "flower-supernode", "flwr"}
NAMES = {"Deployment"}
FIXTURES = {"processes"}


def _starts_here(node: ast.AST) -> bool:
    """Does this code (not counting the functions it calls) start a federation process?"""
    # A command line in a comparison is an expected value (a patched Popen's argv), not run.
    compared = {
        id(e)
        for c in ast.walk(node)
        if isinstance(c, ast.Compare)
        for e in ast.walk(c)
        if isinstance(e, ast.List | ast.Tuple)
    }
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in NAMES:
            return True
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = sub.args[0] if sub.args else None
            if isinstance(first, ast.Constant) and (
                (name == "fedguard_cmd" and first.value in COMMANDS)
                or (name == "venv_tool" and first.value in FLOWER_TOOLS)
            ):
                return True
        if isinstance(sub, ast.List | ast.Tuple) and id(sub) not in compared:
            values = [e.value if isinstance(e, ast.Constant) else None for e in sub.elts]
            for i in range(len(values) - 2):
                if values[i : i + 2] == ["-m", "fedguard"] and values[i + 2] in COMMANDS:
                    return True
                if values[i : i + 2] == ["-m", "fedguard.deploy.flower"]:  # patched Flower
                    return True
            if values and values[0] in {"flower-superlink", "flower-supernode"}:
                return True
    return False


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _fixtures(tree: ast.Module) -> set[str]:
    return {
        f.name
        for f in _functions(tree).values()
        if any("fixture" in ast.unparse(d) for d in f.decorator_list)
    }


def _marked_deploy(decorators: list[ast.expr]) -> bool:
    return any("mark.deploy" in ast.unparse(d) for d in decorators)


def _module_marked(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            return "mark.deploy" in ast.unparse(node.value)
    return False


def _starting(functions: dict[str, ast.FunctionDef], extra: set[str]) -> set[str]:
    """Names (module functions and fixtures) that start a process, directly or through
    another such name; ``extra`` are fixtures from conftest.py files known to start one."""
    starting = set(extra)
    changed = True
    while changed:
        changed = False
        for name, fn in functions.items():
            if name in starting:
                continue
            used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
            params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
            if _starts_here(fn) or (used | params) & starting:
                starting.add(name)
                changed = True
    return starting


def _conftest_fixtures() -> set[str]:
    found = set(FIXTURES)
    for conftest in TESTS.rglob("conftest.py"):
        tree = ast.parse(conftest.read_text())
        found |= _starting(_functions(tree), set()) & _fixtures(tree)
    return found


def unmarked_process_tests(root: Path = TESTS) -> list[str]:
    """``path::test`` for every test that starts a federation process without ``deploy``."""
    conftest = _conftest_fixtures()
    missing = []
    for path in sorted(root.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        if _module_marked(tree):
            continue
        starting = _starting(_functions(tree), conftest)
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            if not _marked_deploy(cls.decorator_list):
                tests += [n for n in cls.body if isinstance(n, ast.FunctionDef)]
        for fn in tests:
            if not fn.name.startswith("test") or _marked_deploy(fn.decorator_list):
                continue
            if fn.name in starting:
                missing.append(f"{path.relative_to(root)}::{fn.name}")
    return missing


def test_every_test_that_starts_a_federation_process_is_marked_deploy():
    missing = unmarked_process_tests()
    assert not missing, f"start real processes but lack @pytest.mark.deploy: {missing}"


def test_the_check_sees_each_way_of_starting_a_process(tmp_path: Path):
    # The check must not pass by seeing nothing: one unmarked test per way, one marked.
    (tmp_path / "test_ways.py").write_text(
        "import sys, pytest\n"
        "def _node(toml):\n    return start(fedguard_cmd('client', '--config', toml))\n"
        "def test_helper(tmp_path):\n    _node(tmp_path)\n"
        "def test_list():\n    run([sys.executable, '-m', 'fedguard', 'server'])\n"
        "def test_fixture(processes):\n    pass\n"
        "def test_flower():\n    start([venv_tool('flwr'), 'run'])\n"
        "def test_bench(tmp_path):\n    Deployment(tmp_path, nodes=2, config='warm')\n"
        "@pytest.fixture\ndef link():\n"
        "    start([sys.executable, '-m', 'fedguard.deploy.flower', 'superlink'])\n"
        "def test_patched(link):\n    pass\n"
        "@pytest.mark.deploy\ndef test_marked(processes):\n    pass\n"
        "def test_status():\n    run([sys.executable, '-m', 'fedguard', 'status'])\n"
        "def test_expected_argv(started):\n    assert started == ['-m', 'fedguard', 'client']\n"
    )
    assert unmarked_process_tests(tmp_path) == [
        f"test_ways.py::{name}"
        for name in (
            "test_helper",
            "test_list",
            "test_fixture",
            "test_flower",
            "test_bench",
            "test_patched",
        )
    ]
