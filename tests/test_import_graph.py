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
# The core: no distilabel and no torch at import (only inside functions, if at all). Only the
# adapters (steps, pipelines, the model backends) and the torch modules of ArmoRM, imported
# when a model loads, stand on distilabel or torch.
NOT_CORE = ("magpie_dl.steps", "magpie_dl.pipelines", "magpie_dl.backends", "magpie_dl.reward.armorm_modules")
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


def _core() -> list[str]:
    return sorted(name for name in _modules() if name != "magpie_dl" and not name.startswith(NOT_CORE))


def test_the_core_is_most_of_the_library():
    assert {"magpie_dl.recipe.cleaning", "magpie_dl.run.driver", "magpie_dl.distilabel_compat"} <= set(_core())
    assert len(_core()) > 60


def folder_graph() -> dict[str, set[str]]:
    """Folder of magpie_dl (``magpie_dl.run``, ``magpie_dl.steps``...) -> the folders it imports."""
    def folder(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for src, targets in import_graph().items():
        graph.setdefault(folder(src), set()).update(folder(t) for t in targets if folder(t) != folder(src))
    return graph


def test_no_circle_between_the_folders():
    """The folders stack: each stands on those below it, none on one above it."""
    try:
        TopologicalSorter(folder_graph()).prepare()
    except CycleError as exc:
        pytest.fail(f"folders import in a circle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("module", _core())
def test_core_modules_import_no_distilabel_or_torch(module):
    path = _modules()[module]
    heavy = sorted({name for name, top in _imports(path, module) if top and name.split(".")[0] in HEAVY})
    assert heavy == [], f"{module} imports {heavy} at module level"


def distilabel_private_names() -> set[str]:
    """Every private name (``_x``, not dunder) that distilabel's pipeline, step and model
    modules define or use: what only ``magpie_dl.distilabel_compat`` may name."""
    import distilabel

    root = Path(distilabel.__file__).parent
    names: set[str] = set()
    for module in ("pipeline", "steps/base.py", "models/llms/base.py", "models/mixins", "mixins"):
        paths = [root / module] if module.endswith(".py") else sorted((root / module).rglob("*.py"))
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                name = (node.attr if isinstance(node, ast.Attribute) else node.name
                        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else node.id if isinstance(node, ast.Name) else "")
                if name.startswith("_") and not name.startswith("__"):
                    names.add(name)
    # distilabel's documented logger of custom steps and LLMs; names too generic to be theirs.
    return names - {"_logger", "_", "_T", "_pool", "_step", "_stop", "_write", "_path"}


def private_uses(path: Path, private: set[str]) -> list[str]:
    """Where ``path`` names one of ``private``: an import, an attribute or a string."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distilabel"):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr in private:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in private:
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
    return found


def test_only_the_compat_module_names_distilabel_s_private_parts():
    private = distilabel_private_names()
    assert {"_StepWrapper", "_write_buffer", "_register_batch", "_desired_num_gpus"} <= private
    uses = [use for name, path in _modules().items() if name != "magpie_dl.distilabel_compat"
            for use in private_uses(path, private)]
    assert uses == []
    assert private_uses(_modules()["magpie_dl.distilabel_compat"], private)  # it does, and the scan sees it


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
