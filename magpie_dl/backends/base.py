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
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from distilabel.models.llms.base import LLM
from pydantic import Field, PrivateAttr, field_validator

from magpie_dl.templates.prompts import DEFAULT_TEMPLATE_DATE, chat_token_ids, check_template_date

from magpie_dl.recipe.provenance import model_label

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, GenerateOutput
    from transformers import PreTrainedTokenizerBase

    from magpie_dl.templates.families import ResolvedStops

# None: the engine did not say (a stock distilabel LLM reports no finish reasons).
FinishReason = Literal["stop", "length", "error", None]


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
    # Fixed-length sampling for benchmarks (vLLM backends only): at least this many tokens,
    # and the end-of-sequence token does not end the completion.
    min_tokens: int = 0
    ignore_eos: bool = False

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
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")

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
        if self.min_tokens:
            config["min_tokens"] = self.min_tokens
        if self.ignore_eos:
            config["ignore_eos"] = True
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
    """One sampled continuation.

    ``token_ids`` are what the engine sampled. The rows need only the text, the finish
    reason and the token count, so that is what the result store keeps: a completion read
    back from it has no ids, and equality leaves them out.
    """

    text: str
    token_ids: list[int] = field(default_factory=list, compare=False)
    finish_reason: FinishReason = "stop"
    # Why the backend failed this completion, when finish_reason == "error".
    error: str | None = None
    # Tokens generated (stop token included); len(token_ids) unless given.
    num_tokens: int = -1
    # True when the request never got an answer it could use after all its retries (a
    # server or the path to it failed, not the prompt): the row says ``request_failed``,
    # the run does not end as a success, and a rerun sends it again.
    request_failed: bool = False

    def __post_init__(self) -> None:
        if self.num_tokens < 0:
            self.num_tokens = len(self.token_ids)


def error_completions(n: int, reason: str, request_failed: bool = False) -> list[Completion]:
    """``n`` failed completions carrying ``reason`` (``request_failed``: see :class:`Completion`)."""
    return [Completion("", [], "error", reason, request_failed=request_failed) for _ in range(n)]


Request = tuple[Hashable, PromptInput, SamplingSpec]
"""One request of a stream: the caller's tag, the prompt and how to sample it."""


class CompletionStream(ABC):
    """Requests in, completions out as each finishes: the engine stays busy across batches.

    A batch-at-a-time caller waits for its slowest sequence while the engine idles; a
    stream takes the next requests while the current ones finish. :meth:`submit` does not
    wait for generation; :meth:`poll` returns what finished since the last poll, in the
    order it finished. A stream owns its backend's engine while open: do not call
    ``complete`` on the same backend until :meth:`close`.
    """

    @abstractmethod
    def submit(self, requests: Sequence[Request]) -> None:
        """Start ``requests`` (tags are the caller's; each comes back once from :meth:`poll`)."""

    @abstractmethod
    def poll(self, timeout: float) -> list[tuple[Hashable, list[Completion]]]:
        """Finished requests as ``(tag, completions)``; waits up to about ``timeout``
        seconds when none is ready. Raises when the backend as a whole failed."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Requests submitted and not yet returned by :meth:`poll`."""

    def close(self) -> None:
        """Abandon what is in flight and release the engine; safe to call twice."""

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EachFinished = Callable[[int, list[Completion]], None]
"""Told a prompt's completions, by the prompt's index in its call, once all of them are done."""

CompleteEach = Callable[[list[PromptInput], list[SamplingSpec], EachFinished], None]
"""A call that completes prompts and hands each prompt's completions to ``finished`` as soon as
they are done (in any order), rather than all at the call's end."""


class CallStream(CompletionStream):
    """A stream over :meth:`CompletionLLM.complete`: each :meth:`submit` is one call, run in
    submission order on one worker thread.

    The default for every backend: the caller still gets to submit ahead (the next batch
    is ready when the engine frees), and each call's prompts are exactly one submission,
    so results are those of the same ``complete`` calls made one after another.
    ``complete_each`` (a backend's own, same results as ``complete``) lets :meth:`poll` return
    each prompt as it finishes within its call, not all at the call's end.
    """

    def __init__(self, llm: CompletionLLM, complete_each: CompleteEach | None = None) -> None:
        self._llm = llm
        self._each = complete_each or self._all_at_end
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="completion-stream")
        self._done: queue.Queue[tuple[Hashable, list[Completion]] | _FailedCall] = queue.Queue()
        self._failed: _FailedCall | None = None
        self._in_flight = 0
        self._lock = threading.Lock()

    def _all_at_end(self, prompts: list[PromptInput], specs: list[SamplingSpec], finished: EachFinished) -> None:
        results = self._llm.complete(prompts, specs)
        if len(results) != len(prompts):
            raise ValueError(f"complete() returned {len(results)} results for {len(prompts)} prompts")
        for i, completions in enumerate(results):
            finished(i, completions)

    def submit(self, requests: Sequence[Request]) -> None:
        requests = list(requests)
        if not requests:
            return
        with self._lock:
            self._in_flight += len(requests)
        self._pool.submit(self._call, requests)

    def _call(self, requests: list[Request]) -> None:
        told = 0

        def finished(i: int, completions: list[Completion]) -> None:
            nonlocal told
            told += 1
            self._done.put((requests[i][0], completions))

        try:
            self._each([p for _, p, _ in requests], [s for _, _, s in requests], finished)
        except BaseException as e:  # raised from poll, as `complete` would raise
            self._done.put(_FailedCall(e, len(requests) - told))

    def poll(self, timeout: float) -> list[tuple[Hashable, list[Completion]]]:
        if self._failed is not None:
            raise self._failed.error
        finished: list[tuple[Hashable, list[Completion]]] = []
        block = True
        while True:
            try:
                item = self._done.get(block=block and self.in_flight > 0, timeout=timeout)
            except queue.Empty:
                return finished
            block = False
            if isinstance(item, _FailedCall):
                with self._lock:
                    self._in_flight -= item.unfinished
                self._failed = item
                if finished:  # these finished before the call failed: hand them on first
                    return finished
                raise item.error
            with self._lock:
                self._in_flight -= 1
            finished.append(item)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def close(self) -> None:
        # Calls not started are dropped; one already running finishes (it cannot be interrupted).
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _FailedCall:
    error: BaseException
    unfinished: int  # requests of the call that never finished


class CompletionLLM(LLM):
    """A distilabel LLM that completes raw token-id prompts.

    Attributes:
        model: path or hub id of the model.
        tokenizer_path: tokenizer path or hub id; defaults to ``model``.
        trust_remote_code: explicit opt-in to run code shipped with the model.
        chat_template_date: the ISO date chat templates render as "today" (pinned, so
            prompts do not change with the day a run resumes on).
    """

    kind: ClassVar[str] = "custom"
    """The engine, as the config's ``backend.kind`` names it; rows record it (``gen_response_configs.engine``)."""

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
    _turn_stops: ResolvedStops | None = PrivateAttr(default=None)
    _on_decoded: Callable[[int], None] | None = PrivateAttr(default=None)

    @property
    def decodes_live(self) -> bool:
        """Whether this engine says, as it decodes, how many tokens each step produced
        (:meth:`decoded`): the running step then counts tokens from those reports, not from
        finished completions, so a long batch shows its rate before any row is done."""
        return False

    def report_decoded_to(self, callback: Callable[[int], None] | None) -> None:
        """Have :meth:`decoded` reports go to ``callback`` (the running step's progress)."""
        self._on_decoded = callback

    def decoded(self, tokens: int) -> None:
        """Called by an engine that :attr:`decodes_live` after each decoding step, with the tokens it produced."""
        if self._on_decoded is not None:
            self._on_decoded(tokens)

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
        self._turn_stops = None

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

    def open_stream(self) -> CompletionStream:
        """A :class:`CompletionStream` on this backend (load it first). Backends that can take
        requests while others run (vLLM's engine, servers) override this."""
        return CallStream(self)

    def turn_stops(self) -> ResolvedStops:
        """What ends an assistant turn for this model: its family's response stops (the family
        detected from the chat template, ``magpie_dl.templates.families``) and its eos token."""
        if self._turn_stops is None:
            from magpie_dl.templates.families import resolve_family, resolve_stops

            family = resolve_family("auto", self.tokenizer, self.chat_template_date)
            self._turn_stops = resolve_stops(self.tokenizer, family.response_stop)
        return self._turn_stops

    def chat_sampling(
        self, num_generations: int = 1, temperature: float = 1.0, top_p: float = 1.0,
        max_new_tokens: int = 256, seed: int | None = None,
    ) -> SamplingSpec:
        """How :meth:`generate` samples: its arguments, stopping at the end of the assistant turn."""
        stops = self.turn_stops()
        return SamplingSpec(
            n=num_generations, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
            stop=stops.strings, stop_token_ids=stops.token_ids,
        )

    def generate(
        self,
        inputs: list[FormattedInput],
        num_generations: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
    ) -> list[GenerateOutput]:
        """distilabel's chat interface (what stock tasks such as ``TextGeneration`` call), over
        :meth:`complete` with :meth:`chat_prompt`; each completion ends with the assistant's turn.

        Explicit keyword parameters (no ``**kwargs``): distilabel turns this signature into the
        LLM's ``generation_kwargs`` runtime parameters, and stock tasks pass them here. Our own
        steps sample with their own knobs and refuse ``generation_kwargs``
        (:func:`magpie_dl.steps.base.check_llm_for_step`).
        """
        spec = self.chat_sampling(num_generations, temperature, top_p, max_new_tokens, seed)
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
