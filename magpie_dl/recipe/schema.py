"""The Arrow type of every column the recipes write, declared once, and how any other column's
type is settled across the chunks of a run.

A run's rows reach disk in chunks (distilabel's write buffer writes a leaf step's rows every
few batches). A chunk alone cannot tell a column's type: ``[]`` is ``list<null>``, ``None``
is ``null``, a struct without an optional key lacks that field. So the columns the recipes
write have their types declared here (the released DPO schema's, ours, the curation
recipe's), and a column passed through from a user's file is typed by what all its chunks
held (:func:`merge_types`): null gives way to any type, ``list<null>`` to ``list<T>``, a
struct gains the fields later chunks add, int64 widens to double. Values whose types cannot
be merged (a number in one chunk, text in another) are kept as their JSON text
(:func:`as_json_text`), and the run says which column.

Pure logic over pyarrow (imported where used, not at module import).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from magpie_dl.recipe.conversation import (
    ALL_TURN_COLUMNS, CONVERSATION, MAX_TURNS, RELEASED_CONVERSATIONS, later_query_columns, reply_finish_column,
)

if TYPE_CHECKING:
    import pyarrow as pa


class TypeConflict(ValueError):
    """Two chunks hold values of a column whose types cannot be merged."""


@lru_cache(maxsize=1)
def column_types() -> dict[str, pa.DataType]:
    """Every column a recipe's steps write (both recipes), with its Arrow type."""
    import pyarrow as pa

    text, texts = pa.string(), pa.list_(pa.string())
    message = pa.struct([("role", text), ("content", text)])
    query_configs = pa.struct([
        ("input_generator", text), ("temperature", pa.float64()), ("top_p", pa.float64()),
        ("max_tokens", pa.int64()), ("seed", pa.int64()), ("pre_query_template", text), ("family", text),
        ("family_source", text), ("chat_template_date", text), ("stop_at_newline", pa.bool_()),
        ("finish_reason", text), ("num_tokens", pa.int64()),
    ])  # (+ num_turns, multi_turn_system_prompt, reply_* in multi-turn runs: every row has them there)
    response_configs = pa.struct([
        ("prompt", text), ("temperature", pa.float64()), ("top_p", pa.float64()),
        ("repetition_penalty", pa.float64()), ("max_tokens", pa.int64()), ("stop_tokens", texts),
        ("output_generator", text), ("engine", text), ("seed", pa.int64()), ("prompt_style", text),
        ("thinking", pa.bool_()), ("chat_template_date", text),
    ])
    tagging_error = pa.struct([("task", text), ("error", text), ("finish_reason", text), ("raw_output", text)])
    return {
        # queries (released: uuid, instruction, gen_input_configs)
        "uuid": text, "instruction": text, "raw_instruction": text, "cleaning_actions": texts,
        "cleaning_removed": texts, "instruction_status": text, "system_prompt_category": text,
        "gen_input_configs": query_configs,
        # responses (released: responses <- generations, gen_response_configs)
        "generations": texts, "finish_reasons": texts, "generation_tokens": pa.list_(pa.int64()),
        "gen_response_configs": response_configs, "reasoning": texts,
        # scores (released: rewards_armorm <- ratings)
        "ratings": pa.list_(pa.float64()), "rating_truncated": pa.list_(pa.bool_()), "rating_errors": texts,
        "reward_objectives": pa.list_(pa.list_(pa.float64())),
        # pairs (released: chosen, rejected)
        "pair_status": text, "response_status": texts, "chosen_index": pa.int64(), "rejected_index": pa.int64(),
        "chosen_score": pa.float64(), "rejected_score": pa.float64(), "score_margin": pa.float64(),
        "chosen": pa.list_(message), "rejected": pa.list_(message),
        # released columns of the export
        "input_length": pa.int64(), "responses": texts, "rewards_armorm": pa.list_(pa.struct([("score", pa.float64())])),
        "rewards_armorm_objectives": pa.list_(pa.list_(pa.float64())), "rewards": pa.list_(pa.struct([("score", pa.float64())])),
        "reward_model": text,
        # curation (tags, safety, instruct reward, near-duplicates, selection)
        "intent": text, "knowledge": text, "difficulty": text, "input_quality": text,
        "quality_explanation": text, "task_category": text, "other_task_category": texts,
        "tagging_model": text, "tagging_errors": pa.list_(tagging_error), "safety": text,
        "safety_categories": texts, "safety_model": text, "language": text,
        "instruct_response": texts, "instruct_finish_reasons": texts, "instruct_ratings": pa.list_(pa.float64()),
        "instruct_reward_objectives": pa.list_(pa.list_(pa.float64())),
        "instruct_reward": pa.float64(), "embedding": pa.list_(pa.float32()),
        "min_neighbor_distance": pa.float64(), "repeat_count": pa.int64(), "min_similar_uuid": text,
        "selection_reason": text,
        # multi-turn (magpie_dl.recipe.conversation)
        CONVERSATION: pa.list_(message),
        RELEASED_CONVERSATIONS: pa.list_(pa.struct([("from", text), ("value", text)])),
        **{name: text for name in ALL_TURN_COLUMNS},
        **{reply_finish_column(t): text for t in range(1, MAX_TURNS + 1)},
        **{name: kind for t in range(2, MAX_TURNS + 1) for name, kind in zip(later_query_columns(t), (text, texts, texts))},
    }


def merge_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The narrowest type holding values of both ``a`` and ``b``; :class:`TypeConflict` if none.

    null gives way to anything; lists merge their items; structs merge field by field (a
    field one side lacks is null there); int64 widens to double; large and plain strings
    merge to string. Anything else must match exactly.
    """
    import pyarrow as pa
    import pyarrow.types as t

    if a.equals(b):
        return a
    if t.is_null(a):
        return b
    if t.is_null(b):
        return a
    if _is_list(a) and _is_list(b):
        return pa.list_(merge_types(a.value_type, b.value_type))
    if t.is_struct(a) and t.is_struct(b):
        fields = {f.name: f.type for f in a}
        for f in b:
            fields[f.name] = merge_types(fields[f.name], f.type) if f.name in fields else f.type
        return pa.struct(list(fields.items()))
    if t.is_integer(a) and t.is_integer(b):
        return pa.int64()
    if (t.is_integer(a) or t.is_floating(a)) and (t.is_integer(b) or t.is_floating(b)):
        return pa.float64()
    if _is_text(a) and _is_text(b):
        return pa.string()
    raise TypeConflict(f"{a} and {b}")


def _is_list(kind: pa.DataType) -> bool:
    import pyarrow.types as t

    return t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind)


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow.types as t

    return t.is_string(kind) or t.is_large_string(kind)


def chunk_type(values: list[Any]) -> pa.DataType:
    """The type Arrow infers for one chunk's values of a column; :class:`TypeConflict` when
    the values disagree among themselves (a struct in one row, text in another)."""
    import pyarrow as pa

    try:
        return pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        raise TypeConflict(str(exc).splitlines()[0]) from None


def as_json_text(value: Any) -> str | None:
    """A value of a column whose types conflict, kept as its JSON text (None stays None)."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


__all__ = ["TypeConflict", "as_json_text", "chunk_type", "column_types", "merge_types"]
