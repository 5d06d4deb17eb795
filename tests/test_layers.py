"""The layering rule: configs -> memory, skills -> nodes -> graph -> interfaces; no module imports upward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"configs": 0, "memory": 1, "skills": 1, "nodes": 2, "graph": 3, "interfaces": 4}


def _modules() -> list[Path]:
    return sorted(p for folder in RANK for p in (ROOT / folder).rglob("*.py") if "library" not in p.parts)


def _gems_imports(tree: ast.AST) -> list[tuple[ast.ImportFrom | ast.Import, str]]:
    found = []
    for node in ast.walk(tree):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found += [(node, name) for name in names if name.startswith("gems.")]
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_or_beside_it(path):
    layer = path.relative_to(ROOT).parts[0]
    for node, name in _gems_imports(ast.parse(path.read_text(encoding="utf-8"))):
        target = name.split(".")[1]
        assert target == layer or RANK[target] < RANK[layer], f"{path.name}:{node.lineno} imports {name} ({layer})"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_first_party_imports_are_at_the_top(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` and `try: ... except ImportError` (optional extras) count as top
        if isinstance(node, ast.If | ast.Try):
            top |= {id(child) for child in node.body}
    for node, name in _gems_imports(tree):
        assert id(node) in top, f"{path.name}:{node.lineno} imports {name} inside a function"
