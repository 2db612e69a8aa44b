"""Steps configured from the recipe's config sections, one way for every step.

A setting is declared once, in its config section (:mod:`magpie_dl.config.sections`); a step's
field for it is declared from that declaration with :func:`setting` (its default,
description and bounds), so the runtime parameters people reuse the steps by stay the
steps' public knobs. A recipe builds each step from its section whole::

    RewardScoring.from_config(cfg.reward, name="reward", cache_dir=...)

What is not in the section (the ``llm`` built from the section's model, ``name``,
``seed``, ``cache_dir``, mappings) comes in as keyword arguments.
"""

from typing import Annotated, Any, ClassVar, Dict, Optional, Type, TypeVar, Union

from pydantic import BaseModel

from magpie_dl import distilabel_compat
from magpie_dl.config.settings import setting

__all__ = ["Configured", "OptionalRuntimeParameter", "setting"]

_T = TypeVar("_T")

# ``Optional[RuntimeParameter[X]]`` as distilabel reads it (an optional runtime parameter),
# without the ``Field(default=None)`` that distilabel's alias nests inside the union, which
# pydantic warns about for every class that declares one (the field's own default applies).
OptionalRuntimeParameter = Optional[Annotated[Union[_T, None], distilabel_compat.runtime_parameter_annotation()]]

StepT = TypeVar("StepT", bound="Configured")


class Configured:
    """Mixin: ``from_config(section, **kwargs)`` builds the step from a config section.

    Each field of the section sets the step's field of the same name, or the one
    ``config_names`` maps it to where the names differ (``batch_size`` ->
    ``input_batch_size``); a field mapped to ``None`` is not this step's even though the
    step has a field of that name. Section fields the step has no field for are the
    caller's (``model``, from which the caller builds the ``llm``).
    """

    config_names: ClassVar[Dict[str, Optional[str]]] = {}

    @classmethod
    def config_values(cls, section: BaseModel) -> Dict[str, Any]:
        """The step's field values ``section`` sets."""
        values = {}
        for name in type(section).model_fields:
            field = cls.config_names.get(name, name)
            if field is not None and field in cls.model_fields:  # type: ignore[attr-defined]
                values[field] = getattr(section, name)
        return values

    @classmethod
    def from_config(cls: Type[StepT], section: BaseModel, **kwargs: Any) -> StepT:
        """The step for a recipe's config ``section``; ``kwargs`` set the rest (and win)."""
        return cls(**{**cls.config_values(section), **kwargs})
