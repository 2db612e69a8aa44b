"""ArmoRM's torch modules (see :mod:`magpie_dl.reward.armorm`); imported only when a model loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from magpie_dl.reward.armorm import DEFAULTS, last_token_index


@dataclass
class ArmoRMOutput:
    """A forward pass's preference ``score`` and its parts, one row per sequence."""

    score: torch.Tensor
    rewards: torch.Tensor
    gating_output: torch.Tensor


class GatingNetwork(nn.Module):
    """MLP over a hidden state: ReLU between layers, softmax at ``temperature``, times ``logit_scale``."""

    def __init__(self, hidden: int, objectives: int, width: int, depth: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1))
        sizes = [hidden] + [width] * depth
        self.layers = nn.ModuleList(
            [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])] + [nn.Linear(sizes[-1], objectives)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        x = self.layers[-1](x)
        return torch.softmax(x / self.temperature, dim=-1) * self.logit_scale[0]


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    """ArmoRM: Llama backbone, ``num_objectives`` regression head, gating MLP, transform matrix.

    ``forward`` takes the positions explicitly: ``gating_index`` (see
    :func:`magpie_dl.reward.armorm.gating_position`) and ``last_index``, the last real token of
    each row (from ``attention_mask`` when not given, else the final position). Right
    padding needs no mask: the backbone is causal, so pads after a sequence change nothing
    in it.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        objectives = int(_get(config, "num_objectives"))
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, objectives, bias=False)
        self.gating = GatingNetwork(
            config.hidden_size,
            objectives,
            int(_get(config, "gating_hidden_dim")),
            int(_get(config, "gating_n_hidden")),
            float(_get(config, "gating_temperature")),
        )
        self.reward_transform_matrix = nn.Parameter(torch.eye(objectives), requires_grad=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # Our own parameters (a checkpoint always overrides them): unit scale, identity transform.
        with torch.no_grad():
            if isinstance(module, GatingNetwork):
                module.logit_scale.fill_(1.0)
            elif isinstance(module, LlamaForRewardModelWithGating):
                module.reward_transform_matrix.copy_(torch.eye(module.reward_transform_matrix.shape[0]))

    def forward(
        self,
        input_ids: torch.Tensor,
        gating_index: torch.Tensor,
        last_index: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> ArmoRMOutput:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        if last_index is None:
            last_index = (
                last_token_index(attention_mask)
                if attention_mask is not None
                else torch.full((hidden.shape[0],), hidden.shape[1] - 1, dtype=torch.long)
            )
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        rewards = self.regression_layer(hidden[rows, last_index.to(hidden.device)])
        gate = self.gating(hidden[rows, gating_index.to(hidden.device)])
        score = (gate * (rewards @ self.reward_transform_matrix)).sum(dim=-1)
        return ArmoRMOutput(score=score, rewards=rewards, gating_output=gate)


def _get(config: LlamaConfig, key: str) -> float:
    return getattr(config, key, DEFAULTS[key])


def load(model: str, dtype: Any = "auto", device: str = "cpu") -> Any:
    """ArmoRM from its checkpoint (local directory or hub id), weights checked by name.

    Every weight the architecture has must be in the checkpoint and every tensor there
    must be used: a checkpoint of another layout is an error, not a half-random model.
    """
    loaded, info = LlamaForRewardModelWithGating.from_pretrained(model, dtype=dtype, output_loading_info=True)
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"{model}: not an ArmoRM checkpoint layout: {problems}")
    return loaded.to(device).eval()
