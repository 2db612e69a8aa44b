"""Reward scoring with ArmoRM semantics, batch-invariant by construction.

* Input: the reward model's chat template over [user, assistant], user and model
  text tokenised as text (no turn injection), truncated at ``max_length`` tokens.
* Output: the model output's ``score`` when it has one (ArmoRM's preference score),
  else the single logit of a one-label sequence classifier.
* Batches are grouped by length (little padding), right-padded with an attention
  mask, so a sequence's score does not depend on its batch neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magpie_dl.prompts import encode_markup, encode_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SLOTS = ("\u2063MAGPIE_DL_SLOT_0\u2063", "\u2063MAGPIE_DL_SLOT_1\u2063")


def conversation_token_ids(
    tokenizer: PreTrainedTokenizerBase, user: str, assistant: str
) -> list[int]:
    """Chat-template ids of [user, assistant], the two texts encoded as plain text."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SLOTS[0]}, {"role": "assistant", "content": _SLOTS[1]}],
        tokenize=False,
    )
    head, _, rest = rendered.partition(_SLOTS[0])
    middle, _, tail = rest.partition(_SLOTS[1])
    if not rest or _SLOTS[1] not in rest:
        raise ValueError("the reward model's chat template must render both messages")
    return (
        encode_markup(tokenizer, head)
        + encode_text(tokenizer, user)
        + encode_markup(tokenizer, middle)
        + encode_text(tokenizer, assistant)
        + encode_markup(tokenizer, tail)
    )


@dataclass(frozen=True)
class Scored:
    """One score, whether the input was truncated, and why the score is missing."""

    score: float | None
    num_tokens: int
    truncated: bool
    error: str | None = None


class RewardScorer:
    """Scores (instruction, response) pairs with a reward model.

    Args:
        model: path or hub id (``RLHFlow/ArmoRM-Llama3-8B-v0.1`` in the recipe).
        max_length: inputs longer than this are cut to their first ``max_length`` tokens.
        batch_size: sequences per forward pass.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: torch device.
        trust_remote_code: explicit opt-in (ArmoRM's architecture ships with the model).
    """

    def __init__(
        self,
        model: str,
        *,
        max_length: int = 4096,
        batch_size: int = 16,
        dtype: str = "auto",
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        self.model_path = model
        self.max_length = max_length
        self.batch_size = max(1, batch_size)
        self.dtype = dtype
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.model: Any = None
        self.tokenizer: Any = None

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=self.trust_remote_code
        ).to(self.device)
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            # Right padding is masked out, so any id works; the classifier needs one set.
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def unload(self) -> None:
        self.model = None

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[Scored]:
        """Score each (user, assistant) pair."""
        encoded = [conversation_token_ids(self.tokenizer, user, assistant) for user, assistant in pairs]
        return self.score_token_ids(encoded)

    def score_token_ids(self, sequences: list[list[int]]) -> list[Scored]:
        """Score token-id sequences; the result is in input order."""
        import torch

        results: list[Scored | None] = [None] * len(sequences)
        clipped = [seq[: self.max_length] for seq in sequences]
        order = sorted(range(len(clipped)), key=lambda i: len(clipped[i]))
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = max(len(clipped[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids[row, : len(clipped[i])] = torch.tensor(clipped[i], dtype=torch.long)
                    mask[row, : len(clipped[i])] = 1
                scores = self._forward(ids.to(self.device), mask.to(self.device))
                for row, i in enumerate(chunk):
                    value = float(scores[row])
                    results[i] = Scored(
                        score=value if math.isfinite(value) else None,
                        num_tokens=len(clipped[i]),
                        truncated=len(sequences[i]) > self.max_length,
                        error=None if math.isfinite(value) else f"non_finite_score:{value}",
                    )
        return results  # type: ignore[return-value]

    def _forward(self, ids: Any, mask: Any) -> list[float]:
        output = self.model(input_ids=ids, attention_mask=mask)
        return extract_scores(output)


def extract_scores(output: Any) -> list[float]:
    """ArmoRM's ``score`` when present, else the single logit of a sequence classifier."""
    score = getattr(output, "score", None)
    if score is None and isinstance(output, dict):
        score = output.get("score")
    if score is None:
        logits = output.logits
        if logits.shape[-1] != 1:
            raise ValueError(
                f"reward model returns {logits.shape[-1]} logits and no `score`; "
                "use a one-label sequence classifier or a model whose output has `score`"
            )
        score = logits[:, 0]
    return score.float().reshape(-1).cpu().tolist()
