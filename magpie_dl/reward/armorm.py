"""ArmoRM (``RLHFlow/ArmoRM-Llama3-8B-v0.1``) implemented here, so no remote code runs.

The checkpoint ships its own model code, which no longer imports on transformers 5 and
reads positions in ways that break on ordinary inputs (the first pad id as the end of a
sequence, hard-coded Llama-3 ids for the gating position). This module rebuilds the
architecture from the checkpoint's own ``config.json`` and weight names:

* ``model.*``: a transformers ``LlamaModel`` backbone;
* ``regression_layer.weight``: Linear(hidden -> ``num_objectives``, no bias), read at the
  last real token of each sequence (taken from the attention mask / sequence length);
* ``gating.layers.N.weight/bias``: ``gating_n_hidden`` Linear layers of
  ``gating_hidden_dim`` with ReLU, then Linear(-> ``num_objectives``); softmax at
  ``gating_temperature``, times ``gating.logit_scale``; read at the first token of the
  last end-of-user + assistant-header markup (found from the tokenizer's chat template);
* ``reward_transform_matrix`` (objectives x objectives);
* score = sum over objectives of gate x (rewards @ transform).

The torch module itself is in :mod:`magpie_dl.reward.armorm_modules` (heavy imports); this module
holds the logic around it; the scorer imports that one (and its ``load``) only when a model loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, PreTrainedTokenizerBase

ARCHITECTURE = "LlamaForRewardModelWithGating"

# ArmoRM's defaults, used where a config leaves a key out (as its own code does).
DEFAULTS = {"num_objectives": 19, "gating_temperature": 10.0, "gating_hidden_dim": 1024, "gating_n_hidden": 3}

# What ArmoRM-Llama3-8B-v0.1's 19 regression outputs rate, in output order (its model card's
# list): the per-objective rewards stored beside the score name them in this order.
OBJECTIVES = (
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence", "helpsteer-complexity",
    "helpsteer-verbosity", "ultrafeedback-overall_score", "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness", "ultrafeedback-honesty", "ultrafeedback-helpfulness", "beavertails-is_safe",
    "prometheus-score", "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability",
)

# Rendered as the two messages of a conversation; the markup between them is what ArmoRM gates on.
_USER, _ASSISTANT = "\u2063ARMORM_USER\u2063", "\u2063ARMORM_ASSISTANT\u2063"


def read_config(model: str) -> dict[str, Any]:
    """The raw ``config.json`` of a local directory or hub id (no model code runs)."""
    local = Path(model) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(model)
    return config


def is_armorm(config: dict[str, Any]) -> bool:
    """Whether a raw ``config.json`` describes ArmoRM's architecture."""
    return ARCHITECTURE in (config.get("architectures") or [])


def is_armorm_model(model: str) -> bool:
    """Whether ``model`` is ArmoRM, without the network: a local directory by its ``config.json``,
    a hub id by its name (``RLHFlow/ArmoRM-...``)."""
    local = Path(model) / "config.json"
    if local.is_file():
        return is_armorm(json.loads(local.read_text()))
    return "armorm" in model.lower()


def gating_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids ArmoRM gates on: the chat-template markup between user text and assistant text.

    For Llama-3's template that is ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``;
    here it is read from the tokenizer's own template, so no id is hard-coded.
    """
    from magpie_dl.templates.prompts import encode_markup

    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}], tokenize=False
    )
    _, found_user, rest = rendered.partition(_USER)
    middle, found_assistant, _ = rest.partition(_ASSISTANT)
    ids = encode_markup(tokenizer, middle)
    if not (found_user and found_assistant and ids):
        raise ValueError("the reward model's chat template must render markup between the user and assistant messages")
    return ids


def gating_position(ids: Sequence[int], pattern: Sequence[int]) -> int | None:
    """Start of the last occurrence of ``pattern`` in ``ids``; ``None`` when it is absent.

    The last one: with the reward model's template over [user, assistant], that is the
    assistant turn's header (user and model text are encoded as text and cannot hold it).
    """
    pattern = list(pattern)
    width, found, start = len(pattern), None, 0
    # list.index runs in C: only occurrences of the first id are looked at in Python.
    while True:
        try:
            start = ids.index(pattern[0], start)
        except ValueError:
            return found
        if list(ids[start : start + width]) == pattern:
            found = start
        start += 1


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token: the rightmost 1 of its attention mask."""
    import torch

    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.to(torch.long)).argmax(-1)


def armorm_config(base: LlamaConfig, **overrides: Any) -> LlamaConfig:
    """A Llama config with ArmoRM's keys (``num_objectives``, ``gating_*``) and architecture name."""
    from transformers import LlamaConfig

    values = {**base.to_dict(), **DEFAULTS, **overrides, "architectures": [ARCHITECTURE]}
    return LlamaConfig.from_dict(values)

