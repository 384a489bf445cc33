"""Layer contracts read from the source tree (ast), not from what happens to be imported.

1. No import cycle among fedguard's modules. Every import counts: at module level, inside
   a function, inside ``try/except ImportError`` (which hides a cycle only until the
   import order changes); only ``if TYPE_CHECKING:`` blocks, never run, are left out.
   Importing ``a.b.c`` also runs the packages ``a.b`` and ``a`` (unless the importer is
   inside them: a package's own submodules import it while it is being initialised).
2. Only the Flower adapter (``fedguard.deploy.flower``) imports Flower's internals.
   Everything else uses Flower's public API, this allow-list:

   - ``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``: the app API;
   - ``flwr.simulation``: the simulation engine's entry (``run_simulation``);
   - ``flwr.common``, for the names in its ``__all__`` only (not its submodules).

   Tests are not product code and are not scanned: ``tests/deploy_flower`` checks the
   adapter against the private modules it patches, and other tests build Flower messages
   and protobufs (``flwr.proto``) to attack the apps with.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import flwr.common

ROOT = Path(__file__).resolve().parent.parent
# The installed import namespace (setup.py ROOTS): package -> folder.
PACKAGES = {
    "fedguard": ROOT / "fedguard",
    "fedguard.privacy": ROOT / "privacy",
    "fedguard.client": ROOT / "client",
    "fedguard.server": ROOT / "server",
    "fedguard.simulations": ROOT / "simulations",
}
ADAPTER = ("fedguard.deploy.flower",)
PUBLIC_FLOWER = ("flwr.app", "flwr.serverapp", "flwr.clientapp", "flwr.simulation")


def source_modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """Every module of the namespace: dotted name -> file (``__init__`` is the package)."""
    found: dict[str, Path] = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if any(p in ("__pycache__", "tests") or "." in p for p in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            found.setdefault(name, path)  # fedguard/privacy is not a folder; no clash
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_run(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: ``if TYPE_CHECKING:`` bodies left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imports_of(module: str, path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(imported module, names taken from it)`` for every import statement, and for
    every ``importlib.import_module("literal")``."""
    is_package = path.name == "__init__.py"
    out: list[tuple[str, tuple[str, ...]]] = []
    for node in _walk_run(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join([*parts[:keep], *([base] if base else [])])
            out.append((base, tuple(alias.name for alias in node.names)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            out.append((node.args[0].value, ()))
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the fedguard modules importing it runs."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in imports_of(name, path):
            candidates = [target, *(f"{target}.{n}" for n in names)]
            for candidate in candidates:
                parts = candidate.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    own_package = name == dep or name.startswith(dep + ".")
                    if dep in graph and not own_package:
                        graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_flower_imports(modules: dict[str, Path]) -> list[str]:
    """``module: flwr import`` for every import of Flower outside the allow-list."""
    public_common = set(flwr.common.__all__)
    bad = []
    for name, path in modules.items():
        if name.startswith(ADAPTER):
            continue
        for target, names in imports_of(name, path):
            if target != "flwr" and not target.startswith("flwr."):
                continue
            if target in PUBLIC_FLOWER:  # the facades themselves, not their submodules
                continue
            if target == "flwr.common" and names and set(names) <= public_common:
                continue
            bad.append(f"{name}: {target} {', '.join(names)}".rstrip())
    return bad


def test_the_scan_sees_the_tree():
    modules = source_modules()
    assert {"fedguard.cli", "fedguard.privacy", "fedguard.client.launcher"} <= set(modules)
    graph = import_graph(modules)
    assert "fedguard.errors" in graph["fedguard.deploy.flower.version"]
    # a lazy import inside a function counts, and its packages with it
    assert "fedguard.deploy.flower.entry" in graph["fedguard.client.launcher"]


def test_a_hidden_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text(
        "x = 1\ndef f():\n    try:\n        from pkg.a import y\n    except ImportError:\n"
        "        pass\n"
    )
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import z\n"
    )
    graph = import_graph(source_modules({"pkg": pkg}))
    assert cycles(graph) == [["pkg.a", "pkg.b"]]  # pkg.c's import never runs


def test_no_import_cycle_among_fedguard_modules():
    assert cycles(import_graph(source_modules())) == []


def test_only_the_flower_adapter_imports_flower_internals():
    assert private_flower_imports(source_modules()) == []
