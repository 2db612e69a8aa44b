"""The generation seam: a distilabel `LLM` that completes token-id prompts.

Magpie needs things chat-style LLM APIs hide: the exact prompt tokens (one BOS, no
template applied), per-request seeds, stop token ids, a first-token ban, and per
completion the finish reason and token count. Every backend (transformers, vLLM,
OpenAI-compatible servers) implements :meth:`CompletionLLM.complete`; our steps only
call that. Each backend is still a regular distilabel ``LLM`` (``generate`` works on
chat messages), so it serialises into ``pipeline.yaml`` and can drive stock tasks.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from distilabel.models.llms.base import LLM
from pydantic import Field, PrivateAttr, field_validator

from magpie_dl.prompts import DEFAULT_TEMPLATE_DATE, chat_token_ids, check_template_date

from magpie_dl.provenance import model_label

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, GenerateOutput
    from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample one prompt. Mirrors the subset of vLLM's ``SamplingParams`` we use.

    ``seed`` seeds the prompt's first completion; completion ``i`` uses ``seed + i``
    (vLLM's convention), so results do not depend on batch composition.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    # vLLM's repetition penalty: logits of tokens already in the prompt or the completion
    # are divided by it when positive, multiplied when negative; 1.0 changes nothing.
    repetition_penalty: float = 1.0
    # Token ids forbidden at the first generated position only (Magpie's markdown ban).
    first_token_ban_ids: tuple[int, ...] = ()
    # A JSON schema the completion must follow (structured outputs), or None.
    json_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not (0.0 <= self.temperature <= 5.0) or math.isnan(self.temperature):
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def as_config(self) -> dict[str, Any]:
        """The provenance record of these parameters (JSON-able)."""
        config = {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
            "stop_token_ids": list(self.stop_token_ids),
            "first_token_ban_ids": list(self.first_token_ban_ids),
        }
        # Only when it does something: stored results keyed before the field existed stay valid.
        if self.repetition_penalty != 1.0:
            config["repetition_penalty"] = self.repetition_penalty
        return config


@dataclass(frozen=True)
class PromptInput:
    """One prompt: the exact token ids to condition on.

    ``messages`` is the same prompt as chat messages when it has that form; backends
    that can only take chat messages (a chat-completions endpoint) use it.
    """

    token_ids: tuple[int, ...]
    messages: tuple[dict[str, str], ...] | None = None


@dataclass
class Completion:
    """One sampled continuation."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    # Why the backend failed this completion, when finish_reason == "error".
    error: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class CompletionLLM(LLM):
    """A distilabel LLM that completes raw token-id prompts.

    Attributes:
        model: path or hub id of the model.
        tokenizer_path: tokenizer path or hub id; defaults to ``model``.
        trust_remote_code: explicit opt-in to run code shipped with the model.
        chat_template_date: the ISO date chat templates render as "today" (pinned, so
            prompts do not change with the day a run resumes on).
    """

    model: str
    tokenizer_path: str | None = Field(default=None, description="Tokenizer; defaults to `model`.")
    trust_remote_code: bool = Field(default=False, description="Run model code from the hub (opt-in).")
    chat_template_date: str = Field(
        default=DEFAULT_TEMPLATE_DATE, description="ISO date chat templates render as today."
    )

    @field_validator("chat_template_date", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> str:
        return check_template_date(str(value))

    _tokenizer: PreTrainedTokenizerBase | None = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def provenance_name(self) -> str:
        """The model as rows name it: a hub id or the model a local directory holds, never a local path."""
        return model_label(self.model_name)

    def load(self) -> None:
        super().load()
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(
            self.tokenizer_path or self.model, trust_remote_code=self.trust_remote_code
        )

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise RuntimeError(f"{type(self).__name__} is not loaded: call load() first")
        return self._tokenizer

    def chat_prompt(self, messages: list[dict[str, str]] | tuple[dict[str, str], ...]) -> PromptInput:
        """The model's chat template over ``messages`` with a generation prompt, as a prompt.

        Every message's content is encoded as text (a special-token string in it cannot
        open or close a turn) and "today" is :attr:`chat_template_date`.
        """
        ids = chat_token_ids(self.tokenizer, messages, template_date=self.chat_template_date)
        return PromptInput(tuple(ids), tuple(dict(m) for m in messages))

    @abstractmethod
    def complete(
        self, prompts: list[PromptInput], sampling: list[SamplingSpec]
    ) -> list[list[Completion]]:
        """Sample ``sampling[i].n`` completions for ``prompts[i]``, in order.

        A failure confined to one prompt is returned as completions with
        ``finish_reason="error"``; only failures of the whole backend raise.
        """

    def generate(
        self,
        inputs: list[FormattedInput],
        num_generations: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
    ) -> list[GenerateOutput]:
        """distilabel's chat interface, over :meth:`complete` with :meth:`chat_prompt`.

        Explicit keyword parameters (no ``**kwargs``): distilabel turns this signature
        into the LLM's ``generation_kwargs`` runtime parameters.
        """
        spec = SamplingSpec(
            n=num_generations, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
        )
        prompts = [self.chat_prompt(messages) for messages in inputs]
        results = self.complete(prompts, [spec] * len(prompts))
        return [
            {
                "generations": [c.text if c.finish_reason != "error" else None for c in comps],
                "statistics": {
                    "input_tokens": [len(p.token_ids)] * len(comps),
                    "output_tokens": [c.num_tokens for c in comps],
                },
            }
            for p, comps in zip(prompts, results)
        ]
