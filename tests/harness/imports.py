"""What fedguard's modules import, read from the source tree (ast), for the layer tests.

Every import counts: at module level, inside a function, inside ``try/except
ImportError`` (which hides a cycle only until the import order changes); only ``if
TYPE_CHECKING:`` blocks, never run, are left out. Importing ``a.b.c`` also runs the
packages ``a.b`` and ``a`` (unless the importer is inside them: a package's own
submodules import it while it is being initialised).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PACKAGES", "ROOT", "cycles", "import_graph", "imports_of", "source_modules"]

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/harness/imports.py
# The installed import namespace (setup.py ROOTS): package -> folder.
PACKAGES = {
    "fedguard": ROOT / "fedguard",
    "fedguard.privacy": ROOT / "privacy",
    "fedguard.client": ROOT / "client",
    "fedguard.server": ROOT / "server",
    "fedguard.simulations": ROOT / "simulations",
}


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
