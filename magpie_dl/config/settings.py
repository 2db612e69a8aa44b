"""One declaration per setting: a field declared once is reused wherever it appears again.

A setting is declared once, as a pydantic field with its default, description and bounds,
in the model that owns it (a recipe's config section, or a library config such as
:class:`magpie_dl.curation.selection.SelectionConfig`). Another model that exposes the same knob
(a distilabel step's runtime parameter, a recipe section over a library config) declares
its field as ``setting(Owner, "name")`` instead of repeating it::

    class MultiResponseGeneration(Step):
        temperature: RuntimeParameter[float] = setting(ResponsesConfig, "temperature")

The new field keeps its own annotation (``RuntimeParameter[float]`` here); it takes the
owner's default (or default factory), description and numeric bounds. Validators that live
in the owner's annotation (a model path's existence check) are not carried over: a step's
fields are checked where the step uses them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# Numeric bounds: pydantic keeps each as a metadata object with an attribute of its name (``Ge(ge=0)``).
_BOUNDS = ("gt", "ge", "lt", "le")


def setting(owner: type[BaseModel], name: str, **overrides: Any) -> Any:
    """A field declared as ``owner``'s field ``name``: same default, description and bounds.

    ``overrides`` change what must differ, with a reason at the call: ``default=`` (a
    standalone step's default where the recipe's would not suit, e.g. ``device="cpu"``),
    a bound (``ge=1``), or ``None`` to drop a bound.
    """
    info = owner.model_fields[name]
    spec: dict[str, Any] = {
        key: getattr(meta, key) for meta in info.metadata for key in _BOUNDS if getattr(meta, key, None) is not None
    }
    spec["description"] = info.description
    if info.default_factory is not None and "default" not in overrides:
        spec["default_factory"] = info.default_factory
    else:
        spec["default"] = info.default
    spec.update(overrides)
    return Field(**{key: value for key, value in spec.items() if value is not None or key == "default"})
