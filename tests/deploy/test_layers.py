"""The apps stack in layers, and no module imports itself back through others.

inference (the model, no Django app below it) ← agents_app (the models and the game's services)
← training_tasks (the learning loop) ← portal (the web). Imports inside functions count: a
lazy import still ties the modules together.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["inference", "agents_app", "training_tasks", "portal"]


def project_imports() -> dict[str, set[str]]:
    """Each project module (dotted name) and the project modules it imports, anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found.update(f"{node.module}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
            graph[name] = found
    return {name: {m for m in found if m in graph and m != name} for name, found in graph.items()}


def test_no_app_imports_one_above_it():
    upward = [
        f"{module} imports {target}"
        for module, targets in project_imports().items()
        for target in targets
        if LAYERS.index(target.split(".")[0]) > LAYERS.index(module.split(".")[0])
    ]
    assert upward == []


def test_no_module_imports_itself_back():
    graph = project_imports()
    cycles, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
