"""What the two generation steps write, as pure functions of their completions.

:func:`query_row` turns one Magpie query completion into its row (cleaned query, the raw
text beside it, why it is unusable, its provenance); :func:`response_columns` turns a
row's sampled responses into its response columns. The steps in ``steps/`` only send the
requests and hand the completions here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from magpie_dl.templates.chat import split_thinking
from magpie_dl.recipe.cleaning import CleaningRules, CleanResult, clean_query
from magpie_dl.recipe.queries import row_uuid
from magpie_dl.recipe.provenance import Sampled as SamplingSettings, query_provenance
from magpie_dl.recipe.reasons import FINISH_ERROR, instruction_status_of

if TYPE_CHECKING:
    from magpie_dl.templates.family import ModelFamily


class Sampled(Protocol):
    """What is read of one completion (``magpie_dl.backends.base.Completion`` is one)."""

    text: str
    finish_reason: str
    error: str | None
    request_failed: bool

    @property
    def num_tokens(self) -> int: ...


def request_error(completions: Sequence[Sampled]) -> str:
    """Why a request failed after its retries (endpoint and last error), or ``""`` when it did not.

    ``""`` rather than None: a column that is null in distilabel's first written chunk
    cannot take text later."""
    return next((c.error or "request failed" for c in completions if c.request_failed), "")


def cleaned_query(completion: Sampled, rules: CleaningRules) -> tuple[CleanResult, str]:
    """A query completion cleaned, and its status: a failure's, else the cleaner's reason, else
    the finish reason's. A failed request leaves no text: it is a failure, not an empty query."""
    cleaned = clean_query(completion.text, rules)
    status = instruction_status_of(completion.finish_reason, completion.request_failed)
    return cleaned, status if completion.finish_reason == FINISH_ERROR else cleaned.reason or status


def query_row(
    completion: Sampled,
    *,
    generator: str,
    seed: int,
    index: int,
    category: str | None,
    system_prompt: str | None,
    spec: SamplingSettings,
    family: ModelFamily,
    stop_at_newline: bool,
    rules: CleaningRules,
) -> dict[str, Any]:
    """Row ``index`` of a run: its query cleaned, the raw text kept, each cleaning edit
    and what it removed, the status (a failure's, else the cleaner's reason, else the finish
    reason's), ``request_error`` and ``gen_input_configs``. The uuid derives from
    (generator, run seed, index)."""
    cleaned, status = cleaned_query(completion, rules)
    return {
        "uuid": row_uuid(generator, seed, index),
        "instruction": cleaned.instruction,
        "raw_instruction": completion.text,
        "cleaning_actions": list(cleaned.actions),
        "cleaning_removed": list(cleaned.removed),
        "instruction_status": status,
        "request_error": request_error([completion]),
        "system_prompt_category": category,
        "gen_input_configs": query_provenance(
            generator, spec, family, system_prompt, stop_at_newline, completion.finish_reason, completion.num_tokens
        ),
    }


def response_columns(completions: Sequence[Sampled], thinking: bool) -> dict[str, list[Any]]:
    """A row's ``generations`` (stripped of surrounding whitespace, as the reference does),
    ``finish_reasons``, ``generation_tokens`` and ``request_error`` (``""`` unless the request
    failed after its retries). With ``thinking``, each response's think block goes to
    ``reasoning`` and ``generations`` keep the answer alone (what is scored)."""
    columns: dict[str, list[Any]] = {}
    if thinking:
        split = [split_thinking(c.text) for c in completions]
        columns["reasoning"] = [reasoning for reasoning, _ in split]
        columns["generations"] = [answer for _, answer in split]
    else:
        columns["generations"] = [c.text.strip() for c in completions]
    columns["finish_reasons"] = [c.finish_reason for c in completions]
    columns["generation_tokens"] = [c.num_tokens for c in completions]
    columns["request_error"] = request_error(completions)
    return columns
