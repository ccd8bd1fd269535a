"""The package's shape: layers that import only downwards, no circles, unique module names, and
nothing of the checkout reached from the library."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segjax"
# Lowest first. A module imports modules of its own layer and of the layers below, never above.
LAYERS = (
    (
        "shared",
        ("compat", "config", "errors", "files", "losses", "metrics", "parallel", "runtime", "viz"),
    ),
    ("data", ("data",)),
    ("models", ("models",)),
    ("train", ("train",)),
    ("inference", ("inference",)),
    ("workflows", ("workflows",)),
    ("cli", ("cli", "__main__")),
)
# The training code proper: loading a run for prediction never needs it.
TRAINING = {f"segjax.train.{m}" for m in ("step", "loop", "start", "budget", "validate", "optim")}


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


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_every_module_imports_only_its_own_layer_and_those_below():
    graph = imports()
    del graph["segjax"]  # the package's own __init__: a docstring
    upward = [
        f"{module} ({LAYERS[layer(module)][0]}) imports {dep} ({LAYERS[layer(dep)][0]})"
        for module, deps in graph.items()
        for dep in deps
        if dep != "segjax" and layer(dep) > layer(module)
    ]
    assert not upward, upward


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


def test_inference_reads_run_folders_without_the_training_code():
    graph = imports()
    for module, deps in graph.items():
        if module.startswith("segjax.inference."):
            assert not deps & TRAINING, (module, deps & TRAINING)


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
