"""Product and dev apart (#20.6), as the imports have it: the installed package never
imports the benchmarks or the test harness; tests never borrow benchmark code (only the
tests of the benchmarks, here, import them) nor the demo (only its own test does)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("fedguard", "privacy", "client", "server", "simulations")
DEMO = "fedguard.deploy.demo"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _uses(imports: set[str], module: str) -> bool:
    return any(name == module or name.startswith(f"{module}.") for name in imports)


def violations(root: Path) -> list[str]:
    """Every import across the product/dev line under ``root`` (a checkout)."""
    found = []
    for folder in PRODUCT:
        for path in sorted((root / folder).rglob("*.py")):
            imports = _imports(path)
            for dev in ("benchmarks", "harness", "tests"):
                if _uses(imports, dev):
                    found.append(f"{path.relative_to(root)} imports {dev}")
    for path in sorted((root / "tests").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        imports = _imports(path)
        benchmark = {n for n in imports if n.split(".")[-1].startswith(("bench_", "crosscheck"))}
        if benchmark and not rel.startswith("tests/benchmarks/"):
            found.append(f"{rel} imports benchmark code {sorted(benchmark)}")
        demo = {n for n in imports if n.startswith((DEMO, "fedguard.deploy_demo"))}
        if demo and rel != "tests/deploy/test_demo.py":
            found.append(f"{rel} imports the demo {sorted(demo)}")
    return found


def test_product_and_dev_code_stay_apart():
    assert violations(ROOT) == []


def test_the_check_sees_a_test_borrowing_the_demo_or_a_benchmark(tmp_path: Path):
    for folder in PRODUCT:
        (tmp_path / folder).mkdir()
    (tmp_path / "server" / "x.py").write_text("from benchmarks.bench_sim import main\n")
    (tmp_path / "tests" / "client").mkdir(parents=True)
    (tmp_path / "tests" / "client" / "test_x.py").write_text(
        "from fedguard.deploy.demo import prepare_demo\n"
        "from fedguard.simulations.bench_deploy_overhead import Deployment\n"
    )
    assert violations(tmp_path) == [
        "server/x.py imports benchmarks",
        "tests/client/test_x.py imports benchmark code "
        "['fedguard.simulations.bench_deploy_overhead']",
        "tests/client/test_x.py imports the demo "
        "['fedguard.deploy.demo', 'fedguard.deploy.demo.prepare_demo']",
    ]
