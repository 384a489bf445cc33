"""Every file name fedguard writes is spelled once, in fedguard.files.

A reader and a writer that spell a name apart drift apart (one renamed, the other left
reading a file nobody writes): no product module may hold one of these names as a string
in its code (docstrings and comments may mention them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import fedguard.files as files

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("fedguard", "privacy", "client", "server", "simulations")
NAMES = {getattr(files, n) for n in files.__all__}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))  # attribute docstrings
    return ids


def _spelled(tree: ast.AST) -> list[tuple[int, str]]:
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            found += [(node.lineno, n) for n in NAMES if n == node.value or f"/{n}" in node.value]
    return found


def test_names_are_distinct() -> None:
    assert len(NAMES) == len(files.__all__)


def test_no_product_module_spells_a_file_name() -> None:
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel == Path("fedguard/files.py") or "proto" in rel.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found += [f"{rel}:{line}: {name}" for line, name in _spelled(tree)]
    assert found == []
