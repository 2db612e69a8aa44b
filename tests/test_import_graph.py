"""Dependencies point one way: the library never imports its adapters, and nothing imports in a circle.

The graph is read from the source (ASTs), not by importing: every ``import`` / ``from ...
import`` of a module under ``magpie_dl/``, ``steps/`` or ``pipelines/`` is an edge,
including imports inside functions (a lazy import still ties the modules together at run
time). Imports under ``if TYPE_CHECKING:`` are left out: they never run. Importing a
submodule is an edge to that submodule only, not to its parent package's ``__init__``.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folder -> the package it installs as (pyproject.toml maps steps/ and pipelines/ into magpie_dl).
TREES = {"magpie_dl": "magpie_dl", "steps": "magpie_dl.steps", "pipelines": "magpie_dl.pipelines"}
# The pure core: no distilabel and no torch at import (only inside functions, if at all).
CORE = (
    "magpie_dl.templates.families", "magpie_dl.templates.prompts", "magpie_dl.recipe.cleaning", "magpie_dl.recipe.pairing", "magpie_dl.curation.selection",
    "magpie_dl.curation.dedup", "magpie_dl.curation.tagging", "magpie_dl.recipe.reasons",
)  # (there is no schema module: the released columns live in magpie_dl.release.export)
HEAVY = ("distilabel", "torch")


def _module_name(path: Path) -> str:
    folder, *parts = path.relative_to(ROOT).with_suffix("").parts
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([TREES[folder], *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for tree in TREES for p in sorted((ROOT / tree).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str, modules: Mapping[str, Path] | None = None) -> list[tuple[str, bool]]:
    """(imported module name, at module level) for every import that can run.

    ``from pkg import name`` imports the module ``pkg.name`` when ``modules`` has one, else ``pkg``.
    """
    modules = modules or {}
    found: list[tuple[str, bool]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit_stmt(stmt, top)
                continue
            visit_stmt(child, top)

    def visit_stmt(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            found.extend((alias.name, top) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.extend((f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, top)
                         for alias in child.names)
        else:
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (TYPE_CHECKING-only imports excluded)."""
    modules = _modules()
    return {
        name: {target for target, _ in _imports(path, name, modules) if target in modules and target != name}
        for name, path in modules.items()
    }


def test_the_library_never_imports_its_adapters():
    edges = [f"{src} -> {dst}" for src, targets in import_graph().items() if not src.startswith(("magpie_dl.steps", "magpie_dl.pipelines"))
             for dst in sorted(targets) if dst.startswith(("magpie_dl.steps", "magpie_dl.pipelines"))]
    assert edges == []


def test_no_import_cycles():
    try:
        TopologicalSorter(import_graph()).prepare()
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_no_distilabel_or_torch(module):
    path = _modules()[module]
    heavy = sorted({name for name, top in _imports(path, module) if top and name.split(".")[0] in HEAVY})
    assert heavy == [], f"{module} imports {heavy} at module level"


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The graph sees lazy imports, skips TYPE_CHECKING ones and finds a circle."""
    pkg = tmp_path / "magpie_dl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from magpie_dl import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import steps.x\nimport magpie_dl.a\n")
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "x.py").write_text("import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = import_graph()
    assert graph["magpie_dl.a"] == {"magpie_dl.b"} and graph["magpie_dl.b"] == {"magpie_dl.a"}
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()
    assert _imports(tmp_path / "steps" / "x.py", "magpie_dl.steps.x") == [("torch", True)]


def test_the_config_schema_does_not_import_the_ray_code():
    graph, seen, todo = import_graph(), set(), ["magpie_dl.config.dpo"]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    assert "magpie_dl.run.scaleout" not in seen
