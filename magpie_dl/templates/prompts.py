"""Token-exact prompts: template markup as control tokens, user text as plain text.

Two rules hold for every prompt built here:

* exactly one BOS: markup is encoded with ``add_special_tokens=False`` and carries the
  template's own BOS string;
* text that came from a user or a model (instructions, system prompts) is encoded with
  special-token parsing off, so a literal ``<|eot_id|>`` inside it stays characters and
  cannot open or close a turn.

Chat templates that render today's date (Llama 3.1-3.3's "Today Date", others through
``strftime_now``) render a pinned date instead (:func:`render_chat`), so a run resumed on
another day builds the same prompt tokens and finds its stored work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from magpie_dl.templates.family import ModelFamily

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ResponsePromptStyle = Literal["chat_template", "magpie"]

# Stands in for the user's text while a chat template renders; then split out.
_SENTINEL = "\u2063MAGPIE_DL_USER_TEXT\u2063"

# The date chat templates render as "today" unless a run pins another: Llama 3.1's own
# fallback ("26 Jul 2024"), so its template renders as it does with no date given.
DEFAULT_TEMPLATE_DATE = "2024-07-26"

# strftime_now("...") calls with a literal format, as chat templates write them.
_STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(?:'([^']*)'|"([^"]*)")\s*\)""")
_STRFTIME_ANY_CALL = re.compile(r"strftime_now\s*\(")
_PINNED_DATES = "magpie_dl_pinned_dates"


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Tokenise user-supplied text as text: special-token strings stay literal characters."""
    return encode_texts(tokenizer, [text])[0]


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """:func:`encode_text` of many texts in one tokenizer call (the same ids, less overhead)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]]


def encode_markup(tokenizer: PreTrainedTokenizerBase, markup: str) -> list[int]:
    """Tokenise template markup: special-token strings become their control ids."""
    return list(tokenizer.encode(markup, add_special_tokens=False)) if markup else []


def _encode_around(tokenizer: PreTrainedTokenizerBase, rendered: str, text: str) -> list[int]:
    """Encode ``rendered`` (which holds the sentinel once) with ``text`` in its place."""
    head, sep, tail = rendered.partition(_SENTINEL)
    if not sep or _SENTINEL in tail:
        raise ValueError("the chat template must render the user message exactly once")
    return encode_markup(tokenizer, head) + encode_text(tokenizer, text) + encode_markup(tokenizer, tail)


@lru_cache(maxsize=64)
def _pinned_template(template: str, template_date: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``template`` with every ``strftime_now(FMT)`` reading the pinned date instead.

    transformers renders ``strftime_now`` from the wall clock and turns callables passed
    to the template into inert placeholders, so the calls are rewritten to look up the
    pinned date, pre-formatted per format string. Returns (template, (format, text) pairs).
    """
    day = date.fromisoformat(template_date)
    formats: dict[str, str] = {}

    def lookup(match: re.Match[str]) -> str:
        fmt = match.group(1) if match.group(1) is not None else match.group(2)
        formats[fmt] = day.strftime(fmt)
        return f"{_PINNED_DATES}[{fmt!r}]"

    rewritten = _STRFTIME_CALL.sub(lookup, template)
    if _STRFTIME_ANY_CALL.search(rewritten):
        raise ValueError("the chat template calls strftime_now with a computed format; its date cannot be pinned")
    return rewritten, tuple(formats.items())


def check_template_date(value: str) -> str:
    """``value`` if it is an ISO date (``2024-07-26``); else a one-line error."""
    try:
        date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"template date must be an ISO date like {DEFAULT_TEMPLATE_DATE}, got {value!r}") from None
    return str(value)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    template_date: str = DEFAULT_TEMPLATE_DATE,
    enable_thinking: bool = False,
) -> str:
    """The tokenizer's chat template over ``messages`` as text, "today" pinned to ``template_date``.

    Llama 3.1-3.3 templates read ``date_string`` when it is given; templates that call
    ``strftime_now`` get the pinned date through :func:`_pinned_template`. Templates with
    a thinking switch (Qwen3's ``enable_thinking``) render thinking off unless asked.
    """
    template, formats = _pinned_template(tokenizer.get_chat_template(), check_template_date(template_date))
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        date_string=date.fromisoformat(template_date).strftime("%d %b %Y"),
        enable_thinking=enable_thinking,
        **{_PINNED_DATES: dict(formats)},
    )


# Pads each message slot while the template renders: whitespace (so a template's `trim`
# removes it, which tells us the template trims message text) that no template writes.
_PAD = "\u2003"


def chat_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    template_date: str = DEFAULT_TEMPLATE_DATE,
    enable_thinking: bool = False,
) -> list[int]:
    """Token ids of the chat template over ``messages``, every message's content encoded as text.

    The template renders with a slot per message; the markup between slots is encoded
    as markup and each content as text, so special-token strings inside a message stay
    characters. Where the template trims a message (Llama's ``| trim``), so is its text.
    """
    pieces = chat_pieces(tokenizer, messages, add_generation_prompt=add_generation_prompt,
                         template_date=template_date, enable_thinking=enable_thinking)
    return pieces_token_ids(tokenizer, pieces)


def chat_pieces(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    template_date: str = DEFAULT_TEMPLATE_DATE,
    enable_thinking: bool = False,
    open_next: str | None = None,
) -> list[tuple[str, bool]]:
    """The chat template over ``messages`` as ``(piece, is_markup)`` pieces (see :func:`chat_token_ids`).

    ``open_next`` names a role: the template then renders one more message of that role
    and the pieces stop where its content would begin, so they end with the markup the
    template writes between the last message and the next one (its turn end, its next
    turn's opening, and whatever the template folds in there, as Mistral's system prompt).
    """
    rendered_messages = [dict(m) for m in messages] + ([{"role": open_next, "content": ""}] if open_next else [])
    slots = [f"\u2063MAGPIE_DL_MESSAGE_{i}\u2063" for i in range(len(rendered_messages))]
    rendered = render_chat(
        tokenizer,
        [{**m, "content": _PAD + slot + _PAD} for m, slot in zip(rendered_messages, slots)],
        add_generation_prompt=add_generation_prompt and not open_next,
        template_date=template_date,
        enable_thinking=enable_thinking,
    )
    if any(rendered.count(slot) != 1 for slot in slots):
        raise ValueError("the chat template must render each message's content exactly once")
    # In the order the template writes them: Mistral's puts the system prompt in the last user turn.
    order = sorted(range(len(slots)), key=lambda i: rendered.index(slots[i]))
    if open_next and order[-1] != len(slots) - 1:
        raise ValueError("the chat template does not render the next turn last")
    pieces: list[tuple[str, bool]] = []
    rest = rendered
    for i in order:
        head, _, rest = rest.partition(slots[i])
        text = str(rendered_messages[i]["content"])
        if head.endswith(_PAD):
            head = head[: -len(_PAD)]
        else:
            text = text.lstrip()
        if rest.startswith(_PAD):
            rest = rest[len(_PAD):]
        else:
            text = text.rstrip()
        pieces += [(head, True), (text, False)]
    if open_next:
        return pieces[:-1]  # up to where the next message's content begins
    return pieces + [(rest, True)]


def pieces_token_ids(tokenizer: PreTrainedTokenizerBase, pieces: Sequence[tuple[str, bool]]) -> list[int]:
    """Token ids of ``(piece, is_markup)`` pieces: markup as control tokens, the rest as text."""
    return [i for piece, markup in pieces for i in (encode_markup if markup else encode_text)(tokenizer, piece)]


def pre_query_token_ids(
    tokenizer: PreTrainedTokenizerBase, family: ModelFamily, system_prompt: str | None = None
) -> list[int]:
    """Token ids of the pre-query prompt, with an optional system block before the user header."""
    if system_prompt is None:
        system_prompt = family.default_system
    if system_prompt is None:
        return encode_markup(tokenizer, family.pre_query_prompt(None))
    return _encode_around(tokenizer, family.pre_query_prompt(_SENTINEL), system_prompt)


def response_prompt_template(
    tokenizer: PreTrainedTokenizerBase,
    family: ModelFamily,
    style: ResponsePromptStyle,
    template_date: str = DEFAULT_TEMPLATE_DATE,
    thinking: bool = False,
) -> str:
    """The response prompt as a string with ``{instruction}`` (one slot) where the query goes.

    ``magpie`` (the recipe's default) is the reference's bare prompt, as in every released
    row: the pre-query template, the instruction, the assistant header, no system block.
    ``chat_template`` is the model's own template (Llama-3.1's adds a "Cutting Knowledge
    Date" system block), "today" pinned to ``template_date``. ``thinking`` opens the
    assistant turn with thinking on, for families with a switch (Qwen3); off by default.
    """
    if style == "magpie":
        rendered = family.pre_query_prompt(None) + _SENTINEL + family.response_header(thinking)
    elif style == "chat_template":
        family.response_header(thinking)  # a family without a switch refuses thinking here too
        rendered = render_chat(
            tokenizer, [{"role": "user", "content": _SENTINEL}], template_date=template_date, enable_thinking=thinking
        )
    else:
        raise ValueError(f"unknown response prompt style {style!r}; use 'chat_template' or 'magpie'")
    return rendered.replace(_SENTINEL, INSTRUCTION_SLOT)


INSTRUCTION_SLOT = "{instruction}"


def render_response_prompt(template: str, instruction: str) -> str:
    """The response prompt as text (its provenance record), the instruction in its slot."""
    return template.replace(INSTRUCTION_SLOT, instruction, 1)


def response_token_ids(tokenizer: PreTrainedTokenizerBase, template: str, instruction: str) -> list[int]:
    """Token ids of a response prompt from :func:`response_prompt_template`."""
    return _encode_around(tokenizer, template.replace(INSTRUCTION_SLOT, _SENTINEL, 1), instruction)
