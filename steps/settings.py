"""A step's fields declared from the recipe's config sections.

A setting is declared once, in its config section (:mod:`magpie_dl.config.sections`); a step's
field for it is declared from that declaration with :func:`setting` (its default,
description and bounds), so the runtime parameters people reuse the steps by stay the
steps' public knobs. A recipe builds each step from its section whole
(:meth:`steps.base.RecipeStep.from_config`).
"""

from typing import Annotated, Optional, TypeVar, Union

from magpie_dl import distilabel_compat
from magpie_dl.config.settings import setting

__all__ = ["OptionalRuntimeParameter", "setting"]

_T = TypeVar("_T")

# ``Optional[RuntimeParameter[X]]`` as distilabel reads it (an optional runtime parameter),
# without the ``Field(default=None)`` that distilabel's alias nests inside the union, which
# pydantic warns about for every class that declares one (the field's own default applies).
OptionalRuntimeParameter = Optional[Annotated[Union[_T, None], distilabel_compat.runtime_parameter_annotation()]]
