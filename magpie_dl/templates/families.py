"""Model-family knowledge as data: pre-query templates, stop strings, first-token bans.

Magpie prompts an aligned chat model with only the left part of its chat template, up
to where a user message starts; the model then writes a user query. The strings are
read from the model's own chat template (:mod:`magpie_dl.templates.chat`); the table
here names the known families and adds what a template cannot tell (first-token bans,
the reference's newline stop and spellings, default system prompts), and an entry is
used only when the template renders its strings. Token ids are always resolved from
the tokenizer at run time, never hard-coded.

``python -m magpie_dl.templates.families MODEL_DIR [--system-prompt TEXT] [--json]`` shows what a
model gets (its tokenizer is loaded, never the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from magpie_dl.templates.family import ModelFamily, UnknownFamilyError  # the record lives apart; imported from here too

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


_LLAMA3_TURN = ("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
_LLAMA3 = dict(
    bos="<|begin_of_text|>",
    user_header="<|start_header_id|>user<|end_header_id|>\n\n",
    system_template="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
    assistant_header="<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    response_stop=_LLAMA3_TURN,
)
_QWEN_TURN = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
_QWEN = dict(
    bos="",
    user_header="<|im_start|>user\n",
    system_template="<|im_start|>system\n{system}<|im_end|>\n",
    assistant_header="<|im_end|>\n<|im_start|>assistant\n",
    response_stop=_QWEN_TURN,
    # The reference stops Qwen queries on both spellings of the assistant's name.
    stop=_QWEN_TURN + ("Assistant", "assistant"),
    stop_at_newline=True,
)
_MARKDOWN_BAN = ("#", "##", "###", "####", "**", " **", "**:")


def _with_assistant(stops: tuple[str, ...]) -> tuple[str, ...]:
    """Query stops: the response stops and the literal ``assistant``, as the reference stops."""
    return stops + ("assistant",)


# Families after the reference (2025): stops are the template's turn end, the token that
# opens the next turn and EOS. Their queries are not cut at a newline (as smollm2's).
_LLAMA4_TURN = ("<|eot|>", "<|eom|>", "<|end_of_text|>", "<|header_start|>")
_GEMMA3_TURN = ("<end_of_turn>", "<start_of_turn>", "<eos>")
_PHI4_TURN = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
_PHI4_MINI_TURN = ("<|end|>", "<|user|>", "<|endoftext|>")
_MISTRAL_SMALL_TURN = ("</s>", "[INST]")
_DEEPSEEK_TURN = ("<｜end▁of▁sentence｜>", "<｜User｜>")

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in [
        ModelFamily(name="llama-3", stop=_LLAMA3_TURN + ("assistant",), stop_at_newline=True, **_LLAMA3),
        # 3.1 and 3.3 share a template with a "Cutting Knowledge Date" system block of its
        # own; the reference's prompts leave that block out.
        ModelFamily(
            name="llama-3.1",
            stop=_LLAMA3_TURN + ("assistant",),
            first_token_ban=_MARKDOWN_BAN,
            template_default_block=True,
            template_default="",
            **_LLAMA3,
        ),
        ModelFamily(
            name="llama-3.3",
            stop=_LLAMA3_TURN + ("assistant",),
            first_token_ban=_MARKDOWN_BAN,
            template_default_block=True,
            template_default="",
            **_LLAMA3,
        ),
        # Qwen2's template inserts "You are a helpful assistant."; the reference leaves it out.
        ModelFamily(name="qwen2", template_default_block=True, template_default="You are a helpful assistant.", **_QWEN),
        ModelFamily(
            name="qwen2.5",
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            template_default_block=True,
            **_QWEN,
        ),
        # SmolLM2's ChatML template inserts this system block when a conversation has none;
        # with it before the user header the model writes real requests, without it code.
        # Not a family of the reference's scripts: no newline stop, so multi-line requests
        # reach the cleaner whole.
        ModelFamily(
            name="smollm2",
            default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            template_default_block=True,
            **{**_QWEN, "stop_at_newline": False},
        ),
        # Qwen3: ChatML; thinking off renders an empty <think></think> block after the
        # assistant header, and that is the default here for queries and responses.
        ModelFamily(
            name="qwen3",
            **{
                **_QWEN,
                "assistant_header": "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
                "stop_at_newline": False,
            },
            thinking_header="<|im_end|>\n<|im_start|>assistant\n",
        ),
        ModelFamily(
            name="gemma-2",
            bos="<bos>",
            # Gemma-2 has no system role (its template refuses one). The reference writes
            # the user header with an extra "\n".
            user_header="<start_of_turn>user\n\n",
            system_template=None,
            assistant_header="<end_of_turn>\n<start_of_turn>model\n",
            stop=("<eos>", "<bos>", "<end_of_turn>", "assistant"),
            response_stop=("<eos>", "<end_of_turn>"),
            reference_spacing=True,
        ),
        ModelFamily(
            name="gemma-3",
            bos="<bos>",
            user_header="<start_of_turn>user\n",
            system_template=None,
            system_in_user="{system}\n\n",  # Gemma 3 folds a system prompt into the first user turn
            assistant_header="<end_of_turn>\n<start_of_turn>model\n",
            stop=_with_assistant(_GEMMA3_TURN),
            response_stop=_GEMMA3_TURN,
        ),
        ModelFamily(
            name="llama-4",
            bos="<|begin_of_text|>",
            user_header="<|header_start|>user<|header_end|>\n\n",
            system_template="<|header_start|>system<|header_end|>\n\n{system}<|eot|>",
            assistant_header="<|eot|><|header_start|>assistant<|header_end|>\n\n",
            stop=_with_assistant(_LLAMA4_TURN),
            response_stop=_LLAMA4_TURN,
            first_token_ban=_MARKDOWN_BAN,  # carried over from Llama-3.1's scripts
        ),
        # The reference's Phi-3 and Mistral prompts put a space after <s> (decoded
        # SentencePiece text); their templates write none.
        ModelFamily(
            name="phi-3",
            bos="<s>",
            user_header=" <|user|>\n",
            system_template=" <|system|>\n{system}<|end|>\n",
            assistant_header="<|end|>\n<|assistant|>\n",
            stop=(
                "</s>", "<s>", "<unk>", "<|endoftext|>", "<|user|>", "<|assistant|>",
                "<|system|>", "<|end|>", "assistant",
            ),
            stop_at_newline=True,
            response_stop=("</s>", "<|endoftext|>", "<|end|>", "<|user|>"),
            reference_spacing=True,
        ),
        ModelFamily(
            name="phi-4",
            bos="",
            user_header="<|im_start|>user<|im_sep|>",
            system_template="<|im_start|>system<|im_sep|>{system}<|im_end|>",
            assistant_header="<|im_end|><|im_start|>assistant<|im_sep|>",
            stop=_with_assistant(_PHI4_TURN),
            response_stop=_PHI4_TURN,
        ),
        ModelFamily(
            name="phi-4-mini",
            bos="",
            user_header="<|user|>",
            system_template="<|system|>{system}<|end|>",
            assistant_header="<|end|><|assistant|>",
            stop=_with_assistant(_PHI4_MINI_TURN),
            response_stop=_PHI4_MINI_TURN,
        ),
        ModelFamily(
            name="mistral-v0.3",
            bos="<s>",
            user_header=" [INST] ",
            system_template=None,
            # Its template joins a system prompt to the last user turn, before the user's text.
            system_in_user="{system}\n\n",
            assistant_header=" [/INST]",
            stop=("<s>", "</s>", "[INST]", "[/INST]", "assistant"),
            stop_at_newline=True,
            response_stop=("</s>", "[INST]"),
            reference_spacing=True,
        ),
        # Mistral Small 3.x: its template inserts a dated default system prompt, used here.
        ModelFamily(
            name="mistral-small-3",
            bos="<s>",
            user_header="[INST]",
            system_template="[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT]",
            assistant_header="[/INST]",
            stop=_with_assistant(_MISTRAL_SMALL_TURN),
            response_stop=_MISTRAL_SMALL_TURN,
            template_default_block=True,
            use_template_default=True,
        ),
        # DeepSeek-V3: a system prompt is bare text right after the BOS.
        ModelFamily(
            name="deepseek-v3",
            bos="<｜begin▁of▁sentence｜>",
            user_header="<｜User｜>",
            system_template="{system}",
            assistant_header="<｜Assistant｜>",
            stop=_with_assistant(_DEEPSEEK_TURN),
            response_stop=_DEEPSEEK_TURN,
        ),
    ]
}


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; an unknown name is an error that lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}"
        ) from None


def detect_family(tokenizer: PreTrainedTokenizerBase, template_date: str | None = None) -> ModelFamily:
    """The family whose strings the tokenizer's chat template renders; else the derived one.

    Every table entry is compared with what the template renders
    (:func:`magpie_dl.templates.chat.mismatches`): exact matches are preferred to matches
    up to the reference's whitespace, then table order. With no match, the strings read
    from the template are used (``source="derived"``) and :attr:`ModelFamily.note` says
    why in one line. A tokenizer without a chat template is a
    :class:`~magpie_dl.templates.chat.ChatTemplateError`.
    """
    from magpie_dl.templates.chat import derive_parts, derived_family, mismatches, with_template
    from magpie_dl.templates.prompts import DEFAULT_TEMPLATE_DATE

    parts = derive_parts(tokenizer, template_date or DEFAULT_TEMPLATE_DATE)
    found = {name: mismatches(family, parts) for name, family in FAMILIES.items()}
    matching = sorted((f for f in FAMILIES.values() if not found[f.name]), key=lambda f: f.reference_spacing)
    if matching:
        return with_template(matching[0], parts)
    # Name the nearest entry, so the line says what differs from a family the user may expect.
    nearest = min(FAMILIES, key=lambda name: len(found[name]))
    note = (
        f"the chat template matches no known family (nearest {nearest}: {found[nearest][0]}); "
        "using the prompts and stops read from the template"
    )
    return derived_family(parts, note=note)


def resolve_family(
    name: str | None, tokenizer: PreTrainedTokenizerBase, template_date: str | None = None
) -> ModelFamily:
    """``name`` when given ("auto" or None means detect), else detected from the tokenizer.

    A named family is used as the table has it (``--generator.family`` forces it); when
    the tokenizer's template renders something else, :attr:`ModelFamily.note` says what.
    """
    if not name or name == "auto":
        return detect_family(tokenizer, template_date)
    from dataclasses import replace

    from magpie_dl.templates.chat import ChatTemplateError, derive_parts, mismatches, with_template
    from magpie_dl.templates.prompts import DEFAULT_TEMPLATE_DATE

    family = get_family(name)
    try:
        parts = derive_parts(tokenizer, template_date or DEFAULT_TEMPLATE_DATE)
    except ChatTemplateError as exc:
        return replace(family, note=f"family {name} forced; the chat template was not read ({exc})")
    differ = mismatches(family, parts)
    if differ:
        return replace(family, note=f"family {name} forced although the chat template differs: {differ[0]}")
    return with_template(family, parts)


@dataclass(frozen=True)
class ResolvedStops:
    """Stop strings split into the ids of those that are single special tokens, and the rest."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...]


def resolve_stops(tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...]) -> ResolvedStops:
    """Stop strings that are one token in this vocabulary become stop token ids.

    Special tokens are usually not detokenised into text, so a text stop string would
    never see them; their ids must be stop ids. Everything else stays a string.
    """
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    strings: list[str] = []
    for stop in stops:
        if stop in vocab and stop in tokenizer.all_special_tokens + list(tokenizer.added_tokens_encoder):
            ids.append(vocab[stop])
        else:
            strings.append(stop)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ResolvedStops(token_ids=tuple(ids), strings=tuple(strings))


def resolve_single_token_ids(tokenizer: PreTrainedTokenizerBase, texts: tuple[str, ...]) -> tuple[int, ...]:
    """Ids of the strings that are exactly one token (the first-token ban list).

    A string that takes several tokens in this vocabulary cannot be banned as one
    token and is left out: banning its first piece would ban unrelated text.
    """
    ids: list[int] = []
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return tuple(ids)


def describe(family: ModelFamily, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None = None,
             thinking: bool = False) -> dict[str, object]:
    """What Magpie will send a model of ``family``: prompts (``{instruction}`` where the
    query goes), stops, bans, and where the strings came from."""
    from magpie_dl.templates.prompts import response_prompt_template

    out: dict[str, object] = {
        "family": family.name,
        "source": family.source,
        "pre_query_template": family.pre_query_template,
    }
    if system_prompt is not None:
        out["system_pre_query_template"] = family.pre_query_prompt(system_prompt)
    out.update(
        response_prompt_template=response_prompt_template(tokenizer, family, "magpie", thinking=thinking),
        stop=list(family.query_stop(family.stop_at_newline)),
        response_stop=list(family.response_stop),
        first_token_ban=list(family.first_token_ban),
        thinking_switch=family.thinking_header is not None,
        chat_template_date=family.template_date,
        note=family.note or None,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m magpie_dl.templates.families MODEL_DIR``: the family and prompts Magpie will use."""
    import argparse
    import json
    import sys

    from magpie_dl.templates.chat import ChatTemplateError

    from pathlib import Path

    from magpie_dl.hub import hub_endpoint, hub_offline, reachable

    parser = argparse.ArgumentParser(
        prog="python -m magpie_dl.templates.families", allow_abbrev=False,
        description="Show the family, pre-query prompt, response prompt and stops Magpie uses for a model "
        "(loads its tokenizer only).",
    )
    parser.add_argument("model", help="model directory or hub id (its tokenizer is loaded, never the model)")
    parser.add_argument("--system-prompt", default=None, help="also show the pre-query prompt with this system prompt")
    parser.add_argument("--family", default="auto", help="force a table family (default: auto)")
    parser.add_argument("--thinking", action="store_true", help="response prompt with thinking on (Qwen3)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        from transformers import AutoTokenizer

        try:  # a local directory or the hub cache: no network
            tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        except Exception:
            if Path(args.model).expanduser().exists() or hub_offline():
                raise
            if not reachable(hub_endpoint()):  # one line now, not a minute of the hub client's retries
                print(f"error: cannot load a tokenizer from {args.model}: not in the local Hugging Face cache and "
                      f"the hub ({hub_endpoint()}) cannot be reached; download it first or give a model directory",
                      file=sys.stderr)
                return 2
            tokenizer = AutoTokenizer.from_pretrained(args.model)
    except Exception as exc:  # noqa: BLE001 - one line, whatever the loader raised
        print(f"error: cannot load a tokenizer from {args.model}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        family = resolve_family(args.family, tokenizer)
        shown = describe(family, tokenizer, args.system_prompt, args.thinking)
    except (ChatTemplateError, UnknownFamilyError, ValueError) as exc:
        print(f"error: {args.model}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    plain = {"family", "source", "note", "chat_template_date"}  # shown as is; the rest as JSON (escapes visible)
    for key, value in shown.items():
        if value is not None:
            print(f"{key + ':':27} {value if key in plain else json.dumps(value, ensure_ascii=False)}")
    return 0


if __name__ == "__main__":
    # Run the imported module's main, so its ModelFamily is the one the rest of the package uses.
    import sys

    from magpie_dl.templates.families import main as _main

    sys.exit(_main())
