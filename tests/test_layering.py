"""The package's shape: layers that import only downwards, no circles, unique module names, and
nothing of the checkout reached from the library."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segjax"
# Lowest first, with a rank each. A module imports modules of its own layer and of lower ranks,
# never higher. Training and inference share a rank and neither imports the other: a run
# folder (`runs`, below both) is all they share, so prediction never needs the training code.
LAYERS = (
    (
        "shared",
        (
            "compat",
            "config",
            "errors",
            "fields",
            "files",
            "losses",
            "metrics",
            "parallel",
            "runtime",
            "viz",
        ),
        0,
    ),
    ("data", ("data",), 1),
    ("models", ("models",), 2),
    ("runs", ("runs",), 3),
    ("train", ("train",), 4),
    ("inference", ("inference",), 4),
    ("workflows", ("workflows",), 5),
    ("api", ("api",), 6),
    ("cli", ("cli", "__main__"), 7),
)


def module_name(path: Path) -> str:
    name = ".".join(("segjax", *path.relative_to(PACKAGE).with_suffix("").parts))
    return name.removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Every segjax module and the segjax modules it imports (function-level imports too);
    `from segjax.x import y` counts as importing the module segjax.x.y when y is one."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segjax"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("segjax")}
        graph[module_name(path)] = found
    return graph


def layer(module: str) -> tuple[str, int]:
    """(layer name, rank) of a module; the package's own __init__ re-exports the API."""
    top = module.split(".")[1] if "." in module else "api"
    for name, members, rank in LAYERS:
        if top in members:
            return name, rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_every_module_imports_only_its_own_layer_and_those_below():
    graph = imports()
    wrong = []
    for module, deps in graph.items():
        (name, rank) = layer(module)
        for dep in deps - {"segjax"}:
            (their_name, their_rank) = layer(dep)
            if their_rank > rank or (their_rank == rank and their_name != name):
                wrong.append(f"{module} ({name}) imports {dep} ({their_name})")
    assert not wrong, wrong


def test_module_names_do_not_collide():
    names = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__"]
    assert sorted(names) == sorted(set(names)), [n for n in names if names.count(n) > 1]


def test_no_import_circle_inside_the_package():
    graph = imports()
    assert {"segjax.train.loop", "segjax.inference.predictor", "segjax.models.builder"} <= set(
        graph
    )
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
