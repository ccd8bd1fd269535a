"""The package's shape: imports flow one way, and the library reaches nothing of the checkout."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segjax"


def imports() -> dict[str, set[str]]:
    """Every segjax module and the segjax modules it imports (function-level imports too)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("segjax", *path.relative_to(PACKAGE).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segjax"):
                if node.module == "segjax":
                    found |= {f"segjax.{alias.name}" for alias in node.names}
                else:
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("segjax")}
        graph[name] = found
    return graph


def test_no_import_circle_inside_the_package():
    graph = imports()
    assert {"segjax.train", "segjax.predict", "segjax.models"} <= set(graph)
    circles = []

    def visit(module, path):
        for dep in graph.get(module, ()):
            if dep in path:
                circles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep in graph:
                visit(dep, [*path, dep])

    for module in graph:
        visit(module, [module])
    assert not circles, circles


def test_prediction_never_imports_training():
    graph = imports()
    for module in ("segjax.predict", "segjax.tune", "segjax.submission", "segjax.infer"):
        assert "segjax.train" not in graph[module], module


def test_the_library_opens_nothing_of_the_checkout():
    """No path into docs/, scripts/, benchmarks/, tools/ or ../shared from the package: no
    string (docstrings aside) names them, and no module climbs above its own folder."""
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docs:
                    continue
                text = node.value
                for place in ("docs", "scripts", "benchmarks", "tools"):
                    assert not text.startswith((place + "/", place + "\\")), (path.name, text)
                    assert text != place, (path.name, text)
                assert "../shared" not in text, (path.name, text)
            if isinstance(node, ast.Subscript) and ast.unparse(node).endswith(".parents[1]"):
                raise AssertionError(f"{path.name}: {ast.unparse(node)} leaves the package")
