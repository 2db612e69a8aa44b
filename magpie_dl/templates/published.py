"""Chat templates that reproduce each family's published format, for tests and tiny models.

Written here from the formats' documentation (turn markup, special tokens, where a
system prompt goes, what the generation prompt adds); not copied from the models'
files, and shorter: tools, images and multi-part contents are left out. Each spec also
names the family's special tokens and which of them are BOS / EOS / padding, so a
small byte-level BPE can carry them (:func:`family_tokenizer`) and a tiny model can
be trained on it (:func:`magpie_dl.local.tiny.build_family`).

``UNSEEN`` holds templates of no family in the table that follow common patterns (role
headers, ChatML-like turns with another default system prompt, instruction brackets,
plain-text headers): the derived strings must serve them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


@dataclass(frozen=True)
class TemplateSpec:
    """One family's tokens and reproduced chat template.

    Attributes:
        specials: special tokens, in vocabulary order.
        bos, eos, pad: which of them play those roles (``None``: none).
        template: the Jinja chat template.
        prepend_bos: the tokenizer puts BOS before every text it encodes (SentencePiece
            Llama-style tokenizers: Phi-3) while the template writes none.
    """

    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    template: str
    prepend_bos: bool = False


_LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                    "<|finetune_right_pad_id|>")

_LLAMA3_TURNS = (
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Llama 3.0: no system block of its own.
LLAMA3 = "{{- bos_token }}" + _LLAMA3_TURNS
# Llama 3.1 / 3.3: a system block always, with the knowledge cutoff and "today".
LLAMA31 = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
) + _LLAMA3_TURNS


def _chatml(default_system: str | None) -> str:
    """ChatML turns; a system block with ``default_system`` when a conversation has none."""
    default = (
        "{%- if messages[0]['role'] != 'system' %}"
        f"{{{{- '<|im_start|>system\\n{default_system}<|im_end|>\\n' }}}}"
        "{%- endif %}"
    ) if default_system else ""
    return (
        default
        + "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


# Qwen3: no default system block; earlier answers lose their reasoning; thinking off
# (enable_thinking=false) writes an empty think block after the assistant header.
QWEN3 = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

_GEMMA_TURNS = (
    "{%- for message in loop_messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
# Gemma 2: no system role.
GEMMA2 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{{- raise_exception('System role not supported') }}{%- endif %}"
    "{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}"
) + _GEMMA_TURNS
# Gemma 3: a system prompt opens the first user turn.
GEMMA3 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
) + _GEMMA_TURNS

LLAMA4 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' + message['content'] | trim + '<|eot|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|header_start|>assistant<|header_end|>\\n\\n' }}{%- endif %}"
)

# Phi-3: the template writes no BOS (the tokenizer prepends <s>); EOS closes a finished chat.
PHI3 = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"
)
PHI4 = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant<|im_sep|>' }}{%- endif %}"
)
PHI4_MINI = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- else %}{{- eos_token }}{%- endif %}"
)

# Mistral v0.3: a system prompt joins the last user message; answers end with EOS.
MISTRAL_V03 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + message['content'] | trim + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
# Mistral Small 3.x: a system block always, by default one that states today's date.
MISTRAL_SMALL3 = (
    "{%- set today = strftime_now('%Y-%m-%d') %}"
    "{%- set default_system_message = 'You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI.\\n"
    "The current date is ' + today + '.' %}"
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = default_system_message %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
# DeepSeek-V3: system prompts are bare text after BOS; role tokens open the turns.
DEEPSEEK_V3 = (
    "{%- set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set ns.system_prompt = ns.system_prompt + message['content'] %}{%- endif %}"
    "{%- endfor %}"
    "{{- bos_token + ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{- '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}"
)

_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")
_PHI3_SPECIALS = ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>")

FAMILY_TEMPLATES: dict[str, TemplateSpec] = {
    "llama-3": TemplateSpec(_LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", LLAMA3),
    "llama-3.1": TemplateSpec(_LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", LLAMA31),
    "qwen2": TemplateSpec(_QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>", _chatml("You are a helpful assistant.")),
    "qwen2.5": TemplateSpec(_QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>",
                            _chatml("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")),
    "qwen3": TemplateSpec(_QWEN_SPECIALS + ("<think>", "</think>"), None, "<|im_end|>", "<|endoftext|>", QWEN3),
    "gemma-2": TemplateSpec(_GEMMA_SPECIALS, "<bos>", "<eos>", "<pad>", GEMMA2),
    "gemma-3": TemplateSpec(_GEMMA_SPECIALS, "<bos>", "<eos>", "<pad>", GEMMA3),
    "llama-4": TemplateSpec(("<|begin_of_text|>", "<|end_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>",
                             "<|eom|>", "<|finetune_right_pad|>"),
                            "<|begin_of_text|>", "<|eot|>", "<|finetune_right_pad|>", LLAMA4),
    "phi-3": TemplateSpec(_PHI3_SPECIALS, "<s>", "<|endoftext|>", "<|endoftext|>", PHI3, prepend_bos=True),
    "phi-4": TemplateSpec(("<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|dummy_85|>"),
                          None, "<|im_end|>", "<|dummy_85|>", PHI4),
    "phi-4-mini": TemplateSpec(("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                               None, "<|endoftext|>", "<|endoftext|>", PHI4_MINI),
    "mistral-v0.3": TemplateSpec(("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), "<s>", "</s>", None, MISTRAL_V03),
    "mistral-small-3": TemplateSpec(("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
                                    "<s>", "</s>", None, MISTRAL_SMALL3),
    "deepseek-v3": TemplateSpec(("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                                 "<｜▁pad▁｜>"),
                                "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", DEEPSEEK_V3),
}
# Llama 3.3 ships Llama 3.1's template.
FAMILY_TEMPLATES["llama-3.3"] = FAMILY_TEMPLATES["llama-3.1"]

UNSEEN: dict[str, TemplateSpec] = {
    # Role headers between two control tokens, a turn-end token (Llama-3-like, other names).
    "role-headers": TemplateSpec(
        ("<|startoftext|>", "<|endoftext|>", "<|role_start|>", "<|role_end|>", "<|turn_end|>"),
        "<|startoftext|>", "<|endoftext|>", None,
        "{{- bos_token }}{%- for m in messages %}"
        "{{- '<|role_start|>' + m['role'] + '<|role_end|>' + m['content'] + '<|turn_end|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|role_start|>assistant<|role_end|>' }}{%- endif %}",
    ),
    # ChatML turns with a default system prompt no table family has.
    "chatml-like": TemplateSpec(_QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>", _chatml("You are Bolt, a terse bot.")),
    # Llama-2-style instruction brackets: BOS opens every exchange, system folded into it.
    "inst-brackets": TemplateSpec(
        ("<unk>", "<s>", "</s>"), "<s>", "</s>", None,
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set sys = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{%- set messages = messages[1:] %}"
        "{%- else %}{%- set sys = '' %}{%- endif %}"
        "{%- for m in messages %}"
        "{%- if m['role'] == 'user' %}{{- bos_token + '[INST] ' + (sys if loop.first else '') + m['content'] + ' [/INST]' }}"
        "{%- else %}{{- ' ' + m['content'] + ' ' + eos_token }}{%- endif %}"
        "{%- endfor %}",
    ),
    # Plain-text headers (Alpaca-like): no control token but BOS / EOS.
    "plain-headers": TemplateSpec(
        ("<s>", "</s>"), "<s>", "</s>", None,
        "{{- bos_token }}{%- for m in messages %}"
        "{%- if m['role'] == 'system' %}{{- m['content'] + '\\n\\n' }}"
        "{%- elif m['role'] == 'user' %}{{- '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
        "{%- else %}{{- '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '### Response:\\n' }}{%- endif %}",
    ),
}


def family_tokenizer(spec: TemplateSpec, texts: list[str] | None = None, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained on ``texts`` that carries ``spec``'s tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(texts or ["user assistant system hello world ## heading **bold** # title"] * 20, trainer)
    if spec.prepend_bos and spec.bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, core.token_to_id(spec.bos))],
        )
    roles = {"bos_token": spec.bos, "eos_token": spec.eos, "pad_token": spec.pad}
    named = {token for token in roles.values() if token}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        **{key: value for key, value in roles.items() if value},
        additional_special_tokens=[t for t in spec.specials if t not in named],
    )
    tokenizer.chat_template = spec.template
    return tokenizer
