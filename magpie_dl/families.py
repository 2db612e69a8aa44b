"""Model-family knowledge as data: pre-query templates, stop strings, first-token bans.

Magpie prompts an aligned chat model with only the left part of its chat template, up
to where a user message starts; the model then writes a user query. Everything that
differs between families lives in one table here. Token ids are always resolved from
the tokenizer at run time, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class UnknownFamilyError(ValueError):
    """The model family is not in the table (or could not be detected)."""


@dataclass(frozen=True)
class ModelFamily:
    """What Magpie needs to know about one chat-template family.

    Attributes:
        name: the family's name (``llama-3.1``).
        pre_query_template: the chat template up to where a user message starts.
        system_template: a system block with ``{system}`` in it, rendered *before* the
            user header; ``None`` where the family has no system role.
        bos: the literal BOS string the templates start with ("" when none).
        user_header: the user-turn opening that follows the BOS or a system block.
        stop: stop strings for query sampling (end/turn markers, ``assistant``).
        stop_at_newline: also stop query sampling at the first ``\\n`` by default.
        response_stop: stop strings for response sampling (end/turn markers only).
        first_token_ban: strings banned at the first generated position of a query.
        assistant_header: what closes the user turn and opens the assistant's.
        default_system: a system prompt the family's queries need by default.
    """

    name: str
    bos: str
    user_header: str
    system_template: str | None
    stop: tuple[str, ...]
    response_stop: tuple[str, ...]
    first_token_ban: tuple[str, ...] = ()
    # Closes the user turn and opens the assistant's (the Magpie response prompt).
    assistant_header: str = ""
    # A fixed system block the family's queries need (qwen2.5 degrades without it).
    default_system: str | None = None
    # The reference's "early stopping": its query writer stops at the first "\n" (models
    # sometimes answer right after one) unless a family's script turns that off, as the
    # llama-3.1 / 3.3 and gemma-2 scripts do.
    stop_at_newline: bool = False

    def query_stop(self, newline: bool) -> tuple[str, ...]:
        """Stop strings for query sampling, with ``"\\n"`` added when ``newline``."""
        return self.stop + ("\n",) if newline else self.stop

    @property
    def pre_query_template(self) -> str:
        """The left part of the chat template, up to where a user message starts."""
        return self.pre_query_prompt(self.default_system)

    def pre_query_prompt(self, system_prompt: str | None = None) -> str:
        """The pre-query prompt, with ``system_prompt`` as a system block before the user header."""
        if system_prompt is None:
            system_prompt = self.default_system
        if system_prompt is None:
            return self.bos + self.user_header
        if self.system_template is None:
            raise ValueError(f"family {self.name!r} has no system role; drop the system prompt")
        return self.bos + self.system_template.format(system=system_prompt) + self.user_header


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

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in [
        ModelFamily(name="llama-3", stop=_LLAMA3_TURN + ("assistant",), stop_at_newline=True, **_LLAMA3),
        ModelFamily(
            name="llama-3.1",
            stop=_LLAMA3_TURN + ("assistant",),
            first_token_ban=_MARKDOWN_BAN,
            **_LLAMA3,
        ),
        ModelFamily(
            name="llama-3.3",
            stop=_LLAMA3_TURN + ("assistant",),
            first_token_ban=_MARKDOWN_BAN,
            **_LLAMA3,
        ),
        ModelFamily(name="qwen2", **_QWEN),
        ModelFamily(
            name="qwen2.5",
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            **_QWEN,
        ),
        # SmolLM2's ChatML template inserts this system block when a conversation has none;
        # with it before the user header the model writes real requests, without it code.
        # Not a family of the reference's scripts: no newline stop, so multi-line requests
        # reach the cleaner whole.
        ModelFamily(
            name="smollm2",
            default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            **{**_QWEN, "stop_at_newline": False},
        ),
        ModelFamily(
            name="gemma-2",
            bos="<bos>",
            # Gemma has no system role; its template folds a system prompt into the user turn.
            user_header="<start_of_turn>user\n\n",
            system_template=None,
            assistant_header="<end_of_turn>\n<start_of_turn>model\n",
            stop=("<eos>", "<bos>", "<end_of_turn>", "assistant"),
            response_stop=("<eos>", "<end_of_turn>"),
        ),
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
        ),
        ModelFamily(
            name="mistral-v0.3",
            bos="<s>",
            user_header=" [INST] ",
            system_template=None,
            assistant_header=" [/INST]",
            stop=("<s>", "</s>", "[INST]", "[/INST]", "assistant"),
            stop_at_newline=True,
            response_stop=("</s>", "[INST]"),
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


def detect_family(tokenizer: PreTrainedTokenizerBase) -> ModelFamily:
    """Detect the family from the tokenizer's special tokens and chat template."""
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if "<|start_header_id|>" in vocab:
        # 3.1 and 3.3 share a template (with its "Cutting Knowledge Date" block); 3.0 has none.
        return FAMILIES["llama-3.1" if "Cutting Knowledge Date" in template else "llama-3"]
    if "<|im_start|>" in vocab:
        if "named SmolLM" in template:
            return FAMILIES["smollm2"]
        return FAMILIES["qwen2.5" if "You are Qwen, created by Alibaba Cloud" in template else "qwen2"]
    if "<start_of_turn>" in vocab:
        return FAMILIES["gemma-2"]
    if "<|user|>" in vocab and "<|end|>" in vocab:
        return FAMILIES["phi-3"]
    if "[INST]" in vocab:
        return FAMILIES["mistral-v0.3"]
    raise UnknownFamilyError(
        "could not detect the model family from the tokenizer; name it explicitly "
        f"(--family), one of: {', '.join(FAMILIES)}"
    )


def resolve_family(name: str | None, tokenizer: PreTrainedTokenizerBase) -> ModelFamily:
    """``name`` when given ("auto" or None means detect), else detected from the tokenizer."""
    if name and name != "auto":
        return get_family(name)
    return detect_family(tokenizer)


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
