"""How rows name the models that wrote them (``input_generator``, ``output_generator``).

A hub id names itself. A local directory is named by the model it holds when it says so
(a ``magpie_dl_model.json`` manifest, written by our conversions), otherwise by its last
two path parts: a dataset never carries the absolute path of the machine that built it.
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "magpie_dl_model.json"


def model_label(ref: str) -> str:
    """The name a dataset row gives the model at ``ref`` (a hub id or a local directory)."""
    path = Path(ref)
    if not path.is_dir():
        return ref
    try:
        named = json.loads((path / MANIFEST).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        named = None
    if isinstance(named, str) and named:
        return named
    parts = path.resolve().parts
    return "/".join(parts[-2:])


def stand_in_reward_note(reward_model: str) -> str | None:
    """One line saying the scores come from a stand-in, when the reward model is the tiny local one."""
    from magpie_dl.config import TINY_DIR

    path = Path(reward_model)
    if not (path.is_dir() and path.resolve().is_relative_to(TINY_DIR.resolve())):
        return None
    return (
        "scores come from the tiny ArmoRM-layout reward model built here (random heads): no real reward "
        "model can be had offline, so chosen and rejected show the recipe at work, not a quality judgement"
    )
