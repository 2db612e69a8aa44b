"""What a row records about how it was made: the models that wrote it and their settings.

A hub id names itself. A local directory is named by the model it holds when it says so
(a ``magpie_dl_model.json`` manifest, written by our conversions), otherwise by its last
two path parts: a dataset never carries the absolute path of the machine that built it.

``gen_input_configs`` (a query's) and ``gen_response_configs`` (a row's responses') hold
the released schema's keys plus ours (seed, family, prompt style, template date...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from magpie_dl.paths import MANIFEST, TINY_DIR

if TYPE_CHECKING:
    from magpie_dl.templates.family import ModelFamily



class Sampled(Protocol):
    """What a query's provenance records of how it was sampled
    (``magpie_dl.backends.base.SamplingSpec`` is one): the recipe's rules do not depend on the engines."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None


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
    path = Path(reward_model)
    if not (path.is_dir() and path.resolve().is_relative_to(TINY_DIR.resolve())):
        return None
    return (
        "scores come from the tiny ArmoRM-layout reward model built here (random heads): no real reward "
        "model can be had offline, so chosen and rejected show the recipe at work, not a quality judgement"
    )


def stand_in_engine_note(config: dict[str, Any]) -> str | None:
    """One line saying every model was the stand-in (``backend.kind: standin``), when it was."""
    if ((config.get("backend") or {}).get("kind")) != "standin":
        return None
    return (
        "made by magpie_dl's instant stand-in at every model boundary (backend standin): queries, responses, "
        "judge answers and scores are seeded placeholders for scale runs and tests, NOT model output; "
        "never use this dataset as data"
    )


def query_provenance(
    generator: str,
    spec: Sampled,
    family: ModelFamily,
    system_prompt: str | None,
    stop_at_newline: bool,
    finish_reason: str,
    num_tokens: int,
) -> dict[str, Any]:
    """A query's ``gen_input_configs``: who wrote it, from which exact prompt, how sampled, how it ended."""
    return {
        "input_generator": generator,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "max_tokens": spec.max_tokens,
        "seed": spec.seed,
        "pre_query_template": family.pre_query_prompt(system_prompt),
        "family": family.name,
        "family_source": family.source,
        "chat_template_date": family.template_date,
        "stop_at_newline": stop_at_newline,
        "finish_reason": finish_reason,
        "num_tokens": num_tokens,
    }


def response_provenance(
    *,
    prompt: str,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    max_tokens: int,
    stop_tokens: list[str],
    generator: str,
    engine: str,
    seed: int | None,
    prompt_style: str,
    thinking: bool,
    chat_template_date: str | None,
) -> dict[str, Any]:
    """A row's ``gen_response_configs``: the released schema's keys, plus the row seed (None for a
    row not sent), prompt style, thinking and the date the chat template rendered as today
    (recorded only for ``prompt_style == "chat_template"``: the magpie prompt has none)."""
    return {
        "prompt": prompt,
        "temperature": temperature,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "max_tokens": max_tokens,
        "stop_tokens": stop_tokens,
        "output_generator": generator,
        "engine": engine,
        "seed": seed,
        "prompt_style": prompt_style,
        "thinking": thinking,
        "chat_template_date": chat_template_date if prompt_style == "chat_template" else None,
    }
