"""The layout's import rules, read from the source (every import, in functions too):

1. No import cycles between the project's modules.
2. Dependencies run one way between the top-level packages: ``middleware`` <- ``actors`` <-
   ``scheduler``, ``ops`` (``ops`` may use ``scheduler``, not the other way round).
3. Inside ``middleware``, each sub-package imports only those below it (``LAYERS``): the
   foundations know nothing of the middleware built on them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("middleware", "actors", "scheduler", "ops")

#: Which top-level packages each may import (itself included).
MAY_IMPORT = {
    "middleware": {"middleware"},
    "actors": {"middleware", "actors"},
    "scheduler": {"middleware", "actors", "scheduler"},
    "ops": {"middleware", "actors", "scheduler", "ops"},
}

#: The layers of ``middleware``, lowest first; "" is the package's top level (the Middleware
#: classes), but for ``CONTRACTS``, modules of the top level that sit in a layer of their own. A
#: module imports only from its own sub-package and from lower layers.
LAYERS = (
    {"errors"},
    {"policies"},
    {"storage"},
    {"brokers", "serving"},
    {""},
    {"operations", "resumable"},
    {"monitoring"},
)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).with_suffix("")
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from package import module`` imports the module; ``from module import name``, the module.
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


MODULES = project_modules()
GRAPH = {name: imports_of(path, MODULES) - {name} for name, path in MODULES.items()}


def test_there_are_no_import_cycles() -> None:
    cycles = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for imported in sorted(GRAPH[module]):
            if state.get(imported) == "open":
                cycles.append(" -> ".join([*stack[stack.index(imported) :], imported]))
            elif imported not in state:
                visit(imported)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == []


def test_top_level_packages_depend_one_way() -> None:
    wrong = [
        f"{module} imports {imported}"
        for module, imported_modules in sorted(GRAPH.items())
        for imported in sorted(imported_modules)
        if imported.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    ]
    assert wrong == []


CONTRACTS = {"middleware.errors": "errors"}


def layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    sub_package = parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / "middleware" / parts[1]).is_dir()) else ""
    sub_package = CONTRACTS.get(module, sub_package)
    for rank, names in enumerate(LAYERS):
        if sub_package in names:
            return rank, sub_package
    pytest.fail(f"{module}: sub-package middleware.{sub_package} is in no layer of LAYERS; add it where it belongs")


def test_each_middleware_layer_imports_only_those_below_it() -> None:
    wrong = []
    for module, imported_modules in sorted(GRAPH.items()):
        if not module.startswith("middleware."):
            continue
        rank, package = layer_of(module)
        for imported in sorted(imported_modules):
            if imported == "middleware":
                wrong.append(f"{module} imports the package middleware itself (import the module that defines it)")
                continue
            imported_rank, imported_package = layer_of(imported)
            if imported_package != package and imported_rank >= rank:
                wrong.append(f"{module} (layer {rank}) imports {imported} (layer {imported_rank})")
    assert wrong == []


def test_the_rules_see_every_package_and_a_real_graph() -> None:
    """A guard on the guard: an empty or partial graph would pass the rules above."""
    assert {module.split(".")[0] for module in MODULES} == set(PACKAGES)
    assert "middleware.storage.database" in GRAPH["middleware.job_status"]
    assert sum(len(imported) for imported in GRAPH.values()) > 200
