"""Token-exact prompts: template markup as control tokens, user text as plain text.

Two rules hold for every prompt built here:

* exactly one BOS: markup is encoded with ``add_special_tokens=False`` and carries the
  template's own BOS string;
* text that came from a user or a model (instructions, system prompts) is encoded with
  special-token parsing off, so a literal ``<|eot_id|>`` inside it stays characters and
  cannot open or close a turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from magpie_dl.families import ModelFamily

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ResponsePromptStyle = Literal["chat_template", "magpie"]

# Stands in for the user's text while a chat template renders; then split out.
_SENTINEL = "\u2063MAGPIE_DL_USER_TEXT\u2063"


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Tokenise user-supplied text as text: special-token strings stay literal characters."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def encode_markup(tokenizer: PreTrainedTokenizerBase, markup: str) -> list[int]:
    """Tokenise template markup: special-token strings become their control ids."""
    return list(tokenizer.encode(markup, add_special_tokens=False)) if markup else []


def _encode_around(tokenizer: PreTrainedTokenizerBase, rendered: str, text: str) -> list[int]:
    """Encode ``rendered`` (which holds the sentinel once) with ``text`` in its place."""
    head, sep, tail = rendered.partition(_SENTINEL)
    if not sep or _SENTINEL in tail:
        raise ValueError("the chat template must render the user message exactly once")
    return encode_markup(tokenizer, head) + encode_text(tokenizer, text) + encode_markup(tokenizer, tail)


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
    tokenizer: PreTrainedTokenizerBase, family: ModelFamily, style: ResponsePromptStyle
) -> str:
    """The response prompt as a string with ``{instruction}`` (one slot) where the query goes.

    ``chat_template`` is the model's own template (Llama-3.1's adds a "Cutting Knowledge
    Date" system block); ``magpie`` is the reference's bare prompt: the pre-query
    template, the instruction, the assistant header, no system block.
    """
    if style == "magpie":
        rendered = family.pre_query_prompt(None) + _SENTINEL + family.assistant_header
    elif style == "chat_template":
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
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
