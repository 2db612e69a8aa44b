"""Multi-turn rows: where each turn's text lives, and the conversation the steps pass along.

A row of a ``num_turns`` run keeps turn 1 where a single-turn row has it (``instruction``,
so tags and near-duplicates judge the first turn, as the reference does) and each later
turn in the released multi-turn columns: the assistant's reply to turn ``t`` in ``response``
(``t = 1``) or ``response_t``, the user's turn ``t`` in ``instruction_t``. While the steps run,
``conversation`` holds the messages so far as ``{role, content}``, which is what the next
step prompts on; the DPO recipe's responses answer its last user turn, and its ``chosen`` and
``rejected`` are that conversation with the best and the worst response appended.

Pure data and functions: the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The most user turns a run writes (a bound for the declared column types, not a model limit).
MAX_TURNS = 8
CONVERSATION = "conversation"
# The released multi-turn schema's message list ({from: human | gpt, value}).
RELEASED_CONVERSATIONS = "conversations"
_RELEASED_ROLE = {"user": "human", "assistant": "gpt"}


def instruction_column(turn: int) -> str:
    """Where the user's turn ``turn`` (1-based) lives: ``instruction``, ``instruction_2``, ..."""
    return "instruction" if turn == 1 else f"instruction_{turn}"


def response_column(turn: int) -> str:
    """Where the assistant's one reply to turn ``turn`` lives: ``response``, ``response_2``, ..."""
    return "response" if turn == 1 else f"response_{turn}"


def later_query_columns(turn: int) -> tuple[str, str, str]:
    """The raw text, cleaning actions and removed text of a later turn's query (``turn`` >= 2)."""
    return f"raw_instruction_{turn}", f"cleaning_actions_{turn}", f"cleaning_removed_{turn}"


def reply_finish_column(turn: int) -> str:
    """The finish reason of the reply to turn ``turn``."""
    return f"{response_column(turn)}_finish_reason"


def turn_columns(num_turns: int, replies: int) -> list[str]:
    """The released turn columns after turn 1, in order: ``response``, ``instruction_2``,
    ``response_2``, ... with ``replies`` replies (the DPO recipe's last turn has none: its
    responses are the candidates)."""
    columns = []
    for turn in range(1, num_turns + 1):
        if turn > 1:
            columns.append(instruction_column(turn))
        if turn <= replies:
            columns.append(response_column(turn))
    return columns


ALL_TURN_COLUMNS = tuple(turn_columns(MAX_TURNS, MAX_TURNS))


def prompt_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The messages a response to ``row`` answers: its conversation, or its instruction alone."""
    conversation = row.get(CONVERSATION)
    if conversation:
        return [{"role": m["role"], "content": m["content"]} for m in conversation]
    return [{"role": "user", "content": row["instruction"]}]


def with_message(row: Mapping[str, Any], role: str, content: str) -> list[dict[str, str]]:
    """``row``'s conversation with one more message."""
    return [*prompt_messages(row), {"role": role, "content": content}]


def released_conversations(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Messages in the released multi-turn schema: ``{from: human | gpt, value}``."""
    return [{"from": _RELEASED_ROLE[m["role"]], "value": m["content"]} for m in messages]
