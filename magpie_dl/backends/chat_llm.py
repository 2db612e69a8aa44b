"""The one adapter from a stock distilabel LLM (``TransformersLLM``, ``vLLM``, ``OpenAILLM``...) to
what our steps call: :meth:`~magpie_dl.backends.base.CompletionLLM.complete` on chat-shaped prompts.

A stock LLM takes chat messages and applies its own chat template, so it can serve the steps whose
prompts are chat turns (responses, judges); it cannot continue a raw pre-query template (Magpie
queries: :func:`refuse_chat_llm`). It reports no finish reasons, so its completions carry ``None``
(unknown: neither truncated nor failed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

from magpie_dl.backends.base import CallStream, Completion, CompletionLLM, PromptInput, SamplingSpec, error_completions

if TYPE_CHECKING:
    from distilabel.models.llms.base import LLM


class LLMNotSupportedError(TypeError):
    """A step was given an LLM it cannot use; the message is one line saying what to pass instead.

    Not a ``ValueError``: pydantic would wrap it in a many-line validation dump."""


class ChatLLMCompletions:
    """A stock distilabel ``LLM`` seen as our completion seam: prompts go as their ``messages`` to
    its ``generate_outputs``, one call per distinct sampling spec, ``n`` samples each."""

    kind = "distilabel"

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    @property
    def model_name(self) -> str:
        return f"distilabel:{type(self.llm).__name__}:{self.llm.model_name}"

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        """``sampling[i].n`` completions of ``prompts[i]``; a stock LLM's None answer is an error completion."""
        if len(prompts) != len(sampling):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling)} sampling specs")
        by_spec: dict[SamplingSpec, list[int]] = defaultdict(list)
        for i, spec in enumerate(sampling):
            by_spec[spec].append(i)
        results: list[list[Completion]] = [[] for _ in prompts]
        for spec, indices in by_spec.items():
            if spec.first_token_ban_ids or spec.json_schema or spec.min_tokens or spec.ignore_eos:
                raise LLMNotSupportedError(
                    f"{type(self.llm).__name__} cannot take first-token bans, JSON schemas or fixed-length "
                    "sampling; pass a magpie_dl.backends backend (e.g. TransformersBackend)"
                )
            inputs = [[dict(m) for m in _messages(prompts[i])] for i in indices]
            outputs = self.llm.generate_outputs(inputs=inputs, num_generations=spec.n, **_generation_kwargs(self.llm, spec))
            for i, output in zip(indices, outputs):
                results[i] = _completions(output, spec.n)
        return results

    def open_stream(self) -> CallStream:
        return CallStream(self)  # type: ignore[arg-type]  # only complete() is called


def _messages(prompt: PromptInput) -> tuple[dict[str, str], ...]:
    if not prompt.messages:
        raise LLMNotSupportedError("a stock distilabel LLM takes chat messages only; this prompt has none")
    return prompt.messages


def _generation_kwargs(llm: LLM, spec: SamplingSpec) -> dict[str, Any]:
    """The spec as the keyword names the LLM's ``generate`` declares (``max_new_tokens`` or
    ``max_tokens``; ``seed``, ``stop`` only where it takes them)."""
    accepted = {p.name for p in llm.generate_parameters}  # type: ignore[attr-defined]
    wanted: dict[str, Any] = {"temperature": spec.temperature, "top_p": spec.top_p}
    wanted["max_new_tokens" if "max_new_tokens" in accepted else "max_tokens"] = spec.max_tokens
    if spec.seed is not None:
        wanted["seed"] = spec.seed
    if spec.stop:
        wanted["stop"] = list(spec.stop)
    wanted["repetition_penalty"] = spec.repetition_penalty  # 1.0 where the LLM's default is not
    # A greedy answer on an LLM that samples unless told not to (transformers' pipeline).
    if spec.temperature == 0.0 and "do_sample" in accepted:
        wanted["do_sample"] = False
        del wanted["temperature"]
    return {name: value for name, value in wanted.items() if name in accepted}


def _completions(output: Any, n: int) -> list[Completion]:
    texts = list(output.get("generations") or [])
    if len(texts) != n:
        return error_completions(n, f"the LLM returned {len(texts)} generations for {n}")
    tokens = (output.get("statistics") or {}).get("output_tokens") or [-1] * n
    return [
        Completion(text, finish_reason=None, num_tokens=max(int(count or 0), 0))
        if text is not None
        else Completion("", finish_reason="error", error="the LLM returned no text")
        for text, count in zip(texts, tokens)
    ]


def completer(llm: Union[CompletionLLM, LLM]) -> Union[CompletionLLM, ChatLLMCompletions]:
    """What a step completes with: our backend itself, or a stock distilabel LLM through the adapter."""
    return llm if isinstance(llm, CompletionLLM) else ChatLLMCompletions(llm)


def only_our_backends(steps: str, need: str, otherwise: str = "") -> Callable[[Any], Any]:
    """A validator for the ``llm`` of steps that only our backends can serve: a stock
    distilabel LLM is refused in one line saying what the ``steps`` ``need`` and what to pass."""

    def check(llm: Any) -> Any:
        from distilabel.models.llms.base import LLM

        if isinstance(llm, LLM) and not isinstance(llm, CompletionLLM):
            raise LLMNotSupportedError(
                f"{steps} need {need}, which {type(llm).__name__} (a chat-only distilabel LLM) cannot give: pass a "
                f"magpie_dl.backends backend (TransformersBackend, VLLMBackend, OpenAIBackend){otherwise}"
            )
        return llm

    return check


# Magpie queries are raw completions of a pre-query template.
refuse_chat_llm = only_our_backends(
    "Magpie query steps", "raw completions of a pre-query template", " or use distilabel's own MagpieGenerator"
)
# The judge and guard send token-exact prompts and read constrained answers.
refuse_chat_llm_for_tagging = only_our_backends("the tagging steps", "token-exact judge prompts with constrained answers")
