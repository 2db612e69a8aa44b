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
    chat_pieces,
    chat_token_ids,
    pieces_token_ids,
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
    return pieces_token_ids(tokenizer, _follow_up_pieces(tokenizer, family, conversation, system_prompt, template_date))


def follow_up_query_text(
    tokenizer: PreTrainedTokenizerBase,
    family: ModelFamily,
    conversation: Sequence[Message],
    system_prompt: str | None = MULTI_TURN_SYSTEM_PROMPT,
    template_date: str = DEFAULT_TEMPLATE_DATE,
) -> str:
    """:func:`follow_up_query_ids` as text (what a row records and the tests read)."""
    return "".join(piece for piece, _ in _follow_up_pieces(tokenizer, family, conversation, system_prompt, template_date))


def _follow_up_pieces(
    tokenizer: PreTrainedTokenizerBase,
    family: ModelFamily,
    conversation: Sequence[Message],
    system_prompt: str | None,
    template_date: str,
) -> list[tuple[str, bool]]:
    """The writer's prompt as ``(piece, is_markup)``: what the template renders before the next user text.

    The template renders the conversation and opens one more user turn
    (:func:`~magpie_dl.templates.prompts.chat_pieces`), so the prompt ends exactly as a
    conversation of that model continues: no end-of-text a template writes after a closed
    conversation (Phi-3), no spelling of the reference's first-turn header mid-conversation
    (the space it writes after BOS), and a system prompt the template folds into the last
    user turn (Mistral v0.3) right before the text the writer writes. A BOS the template
    writes before that turn is left out (one BOS per prompt); the family's BOS leads
    when the template writes none but the tokenizer puts one before every text (Phi-3).
    """
    _check(family, conversation, "assistant")
    system = follow_up_system_prompt(family, system_prompt)
    messages = ([{"role": "system", "content": system}] if system else []) + [dict(m) for m in conversation]
    pieces = chat_pieces(tokenizer, messages, template_date=template_date, open_next="user")
    # The family's BOS token (SmolLM2's tokenizer names <|im_start|> its BOS; its family has none).
    bos = getattr(tokenizer, "bos_token", None) or ""
    if bos and family.bos.startswith(bos) and bos not in family.user_header:
        opening, markup = pieces[-1]
        pieces[-1] = (opening.replace(bos, ""), markup)
        if not pieces[0][0].startswith(bos):
            pieces.insert(0, (bos, True))
    if system and not any(piece == system for piece, markup in pieces if not markup):
        raise MultiTurnError(
            f"the chat template of family {family.name!r} leaves the system prompt out of a conversation; "
            "later turns cannot carry it"
        )
    return pieces


def follow_up_system_prompt(family: ModelFamily, system_prompt: str | None) -> str | None:
    """The system prompt the writer's later-turn prompts carry with ``family`` (None: none)."""
    if system_prompt and (family.system_template is not None or family.system_in_user is not None):
        return system_prompt
    return None


def _next_user_header(family: ModelFamily) -> str:
    """The user-turn opening after a closed turn in the bare prompt.

    The reference spells some families' first header with the space that decoded text
    shows after BOS (Phi-3's ``" <|user|>"``, Mistral's ``" [INST] "``); mid-conversation
    there is no BOS before it, and the template writes none.
    """
    return family.user_header.lstrip(" ") if family.reference_spacing else family.user_header


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
            between = family.assistant_header if message["role"] == "assistant" else family.turn_end + _next_user_header(family)
            pieces.append((between, True))
        pieces.append((str(message["content"]), False))
    pieces.append((family.response_header(thinking), True))
    return pieces_token_ids(tokenizer, pieces), "".join(piece for piece, _ in pieces)
