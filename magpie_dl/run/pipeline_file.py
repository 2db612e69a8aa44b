"""A run's ``pipeline.yaml`` read back as a distilabel pipeline, whatever release of ours wrote it.

Runs written before the steps were installed as ``magpie_dl.steps`` name them ``steps.<module>``
(and the recipes ``pipelines.<module>``): those names are read as the new ones. Kept for one
release after the move.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Module prefixes of earlier releases -> where those classes live now.
MOVED = {"steps": "magpie_dl.steps", "pipelines": "magpie_dl.pipelines"}


def current_module(module: str) -> str:
    """``module`` as this release names it."""
    head, dot, rest = module.partition(".")
    return MOVED[head] + dot + rest if head in MOVED else module


def _renamed(node: Any) -> Any:
    if isinstance(node, dict):
        node = {key: _renamed(value) for key, value in node.items()}
        info = node.get("type_info")
        if isinstance(info, dict) and isinstance(info.get("module"), str):
            node["type_info"] = {**info, "module": current_module(info["module"])}
        return node
    if isinstance(node, list):
        return [_renamed(value) for value in node]
    return node


def load_pipeline(path: str | Path) -> Any:
    """The distilabel pipeline a ``pipeline.yaml`` describes (steps built, no model loaded)."""
    import yaml
    from distilabel.pipeline import Pipeline

    return Pipeline.from_dict(_renamed(yaml.safe_load(Path(path).read_text())))


__all__ = ["load_pipeline"]
