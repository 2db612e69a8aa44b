"""Multi-turn prompts: a conversation so far, then the next user turn or the next reply.

Magpie's later turns (as the reference's multi-turn script writes them): the query writer
sees the conversation rendered by the model's own chat template, under a system prompt
that tells it a multi-round conversation is going on, and then the user-turn opening
alone (:attr:`ModelFamily.user_header`, never a second BOS); it writes the next user
message. The reply to a user turn is prompted without that system prompt, in the style
the responses use (the reference's bare ``magpie`` prompt, or the model's template).

Every message's text is encoded as text (:func:`~magpie_dl.templates.prompts.chat_token_ids`),
so a turn token a model wrote into a query or a reply stays characters in later prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from magpie_dl.templates.prompts import (
    DEFAULT_TEMPLATE_DATE,
    ResponsePromptStyle,
    chat_token_ids,
    encode_markup,
    encode_text,
    render_chat,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from magpie_dl.templates.family import ModelFamily

Message = Mapping[str, str]

# Our wording of the reference's multi-turn writer prompt (recorded in gen_input_configs).
MULTI_TURN_SYSTEM_PROMPT = (
    "You are a helpful AI assistant. The user is holding a conversation with you over several rounds: "
    "they open with a question or a task and then follow up on what you said, asking related questions "
    "or building on the task. Give thorough, relevant and insightful answers in every round."
)


class MultiTurnError(ValueError):
    """A family or conversation later turns cannot be written for (one line)."""


def _check(family: ModelFamily, conversation: Sequence[Message], last: str) -> None:
    if not family.turn_end:
        raise MultiTurnError(
            f"family {family.name!r} was not read from a chat template, so a second turn cannot be written: "
            "use a model whose tokenizer has a chat template, or --generator.num_turns 1"
        )
    roles = [m["role"] for m in conversation]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if not roles or roles != expected or roles[-1] != last:
        raise MultiTurnError(f"a conversation must alternate user/assistant from a user turn and end with {last}")


def follow_up_query_ids(
    tokenizer: PreTrainedTokenizerBase,
    family: ModelFamily,
    conversation: Sequence[Message],
    system_prompt: str | None = MULTI_TURN_SYSTEM_PROMPT,
    template_date: str = DEFAULT_TEMPLATE_DATE,
) -> list[int]:
    """Token ids of the writer's prompt for the next user turn after ``conversation``.

    ``conversation`` alternates user and assistant messages and ends with the assistant's.
    A family whose template has no system role gets no system prompt (``system_prompt``
    is ignored there; :func:`follow_up_system_prompt` says what a row records).
    """
    _check(family, conversation, "assistant")
    messages = _with_system(family, conversation, system_prompt)
    closed = chat_token_ids(tokenizer, messages, add_generation_prompt=False, template_date=template_date)
    return closed + encode_markup(tokenizer, family.user_header)


def follow_up_query_text(
    tokenizer: PreTrainedTokenizerBase,
    family: ModelFamily,
    conversation: Sequence[Message],
    system_prompt: str | None = MULTI_TURN_SYSTEM_PROMPT,
    template_date: str = DEFAULT_TEMPLATE_DATE,
) -> str:
    """:func:`follow_up_query_ids` as text (what a row records and the tests read)."""
    _check(family, conversation, "assistant")
    messages = _with_system(family, conversation, system_prompt)
    rendered = render_chat(tokenizer, messages, add_generation_prompt=False, template_date=template_date)
    return rendered + family.user_header


def follow_up_system_prompt(family: ModelFamily, system_prompt: str | None) -> str | None:
    """The system prompt the writer's later-turn prompts carry with ``family`` (None: none)."""
    if system_prompt and (family.system_template is not None or family.system_in_user is not None):
        return system_prompt
    return None


def _with_system(family: ModelFamily, conversation: Sequence[Message], system_prompt: str | None) -> list[Message]:
    system = follow_up_system_prompt(family, system_prompt)
    return ([{"role": "system", "content": system}] if system else []) + [dict(m) for m in conversation]


def conversation_prompt(
    tokenizer: PreTrainedTokenizerBase,
    family: ModelFamily,
    style: ResponsePromptStyle,
    conversation: Sequence[Message],
    template_date: str = DEFAULT_TEMPLATE_DATE,
    thinking: bool = False,
) -> tuple[list[int], str]:
    """The reply prompt after ``conversation`` (ending with a user turn): ``(token ids, text)``.

    ``magpie`` extends the reference's bare response prompt turn by turn: the pre-query
    prompt, each user message, the assistant header, each reply, the turn end and the next
    user header, and the assistant header (``thinking`` opens the last one with thinking on).
    ``chat_template`` is the model's own template over the messages.
    """
    _check(family, conversation, "user")
    if style == "chat_template":
        family.response_header(thinking)  # a family without a switch refuses thinking here too
        ids = chat_token_ids(tokenizer, conversation, template_date=template_date, enable_thinking=thinking)
        text = render_chat(tokenizer, conversation, template_date=template_date, enable_thinking=thinking)
        return ids, text
    if style != "magpie":
        raise ValueError(f"unknown response prompt style {style!r}; use 'chat_template' or 'magpie'")
    pieces: list[tuple[str, bool]] = [(family.pre_query_prompt(None), True)]  # (piece, is markup)
    for i, message in enumerate(conversation):
        if i:
            between = family.assistant_header if message["role"] == "assistant" else family.turn_end + family.user_header
            pieces.append((between, True))
        pieces.append((str(message["content"]), False))
    pieces.append((family.response_header(thinking), True))
    ids = [i for piece, markup in pieces for i in (encode_markup if markup else encode_text)(tokenizer, piece)]
    return ids, "".join(piece for piece, _ in pieces)
