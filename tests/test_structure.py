"""The shape of the code: the layering rule, one room per process, no import circles.

Imports are read from the source (every ``import`` and ``from ... import``, those inside functions
too), so a lazy import cannot hide a circle or a crossing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "traffic", "monitors", "storage")


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_of(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports (a name imported from a package counts as its
    submodule when there is one)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module, path, set(_modules())) for module, path in _modules().items()}


def _crossings(source: str, target: str) -> list[str]:
    return [
        f"{module} imports {imported}"
        for module, imports in GRAPH.items()
        if module == source or module.startswith(source + ".")
        for imported in imports
        if imported == target or imported.startswith(target + ".")
    ]


def test_the_libraries_import_nothing_of_the_service_or_of_each_other():
    for library, others in (
        ("traffic", ("service", "monitors")),
        ("monitors", ("service", "traffic")),
        ("storage", ("service", "monitors", "traffic")),
    ):
        for other in others:
            assert _crossings(library, other) == []


def test_the_gateway_and_the_monitor_never_import_each_other():
    assert _crossings("service.gateway", "service.monitor") == []
    assert _crossings("service.monitor", "service.gateway") == []


def test_no_process_module_lives_flat_in_service():
    flat = {path.stem for path in (ROOT / "service").glob("*.py")}
    assert not {name for name in flat if name.startswith("monitor")}
    assert not flat & {"bento", "dataplane", "batching", "recording", "rollouts", "notifier"}


def test_there_is_no_import_circle():
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import circle: " + " -> ".join(
            [*visiting[visiting.index(module) :], module]
        )
        visiting.append(module)
        for imported in sorted(GRAPH[module]):
            # a package's __init__ is imported on the way to its submodules; that is no circle
            if not module.startswith(imported + "."):
                visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
