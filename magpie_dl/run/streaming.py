"""Batches through a completion stream: released whole and in order, each result stored as it finishes.

A step handed one batch at a time waits for the batch's slowest sequence while the
engine idles; on long-tailed lengths that tail is most of the time. Here batches are
added while earlier ones still run, all their requests share one
:class:`~magpie_dl.backends.base.CompletionStream`, and a batch comes back only when all
its requests have finished and every batch added before it has come back. So rows leave
in the order they arrived whatever order the engine finishes them in, and with
per-request seeds the samples do not depend on that order either.

Crash safety is the store's, per request: stored results are read back instead of sent,
and each completion is stored as soon as it finishes, so a kill loses only what was in
flight. A batch's :class:`~magpie_dl.run.progress.RowTally` is told of each request as it
finishes, so the live progress moves inside a batch, not when it is released.
:func:`cached_complete` runs one batch the same way (the steps that take a batch at a time).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from magpie_dl.backends.base import Completion, CompletionLLM, CompletionStream, PromptInput, SamplingSpec
from magpie_dl.run.progress import RowTally
from magpie_dl.run.store import ResultStore, completion_key, from_stored, storable_completions, stored_form

DEFAULT_MAX_IN_FLIGHT = 4096
"""Sequences (prompts x samples) a stream holds before it takes another batch: enough to
keep an engine's running set full (vLLM schedules up to a few hundred at once) while the
previous batch's longest sequences finish, small enough that a kill loses little."""


@dataclass
class _Pending:
    serial: int
    key: Hashable
    results: list[list[Completion] | None]
    store_keys: list[str]
    missing: int
    sequences: dict[int, int] = field(default_factory=dict)  # request index -> samples still running
    tally: RowTally | None = None


class OrderedBatches:
    """Batches of prompts completed through one stream, released complete and in the order added.

    Args:
        stream: an open stream (``llm.open_stream()``); closed by :meth:`close`.
        store: the result store, or None to store nothing.
        step: the step name usage is counted under.
        version: the step's cache version (part of every key).
        model_name: the backend's ``model_name`` (part of every key).
        max_in_flight: sequences in flight above which :attr:`has_room` is False.
        count_tokens: count each finished completion's tokens in the batch's tally (False when the
            engine reports them as it decodes).

    Keys are those of :func:`magpie_dl.run.store.completion_key`, as :func:`cached_complete`'s:
    a batch run one way is read back by the other.
    """

    def __init__(
        self,
        stream: CompletionStream,
        store: ResultStore | None,
        step: str,
        version: str,
        model_name: str,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        count_tokens: bool = True,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._stream = stream
        self._store = store
        # False when the engine reports its tokens as it decodes them (CompletionLLM.decodes_live).
        self._count_tokens = count_tokens
        self._step = step
        self._version = version
        self._model = model_name
        self._max_in_flight = max_in_flight
        self._held: deque[_Pending] = deque()
        self._by_serial: dict[int, _Pending] = {}
        self._serial = 0
        self._sequences = 0

    @property
    def has_room(self) -> bool:
        """Whether another batch may be added now (always true when nothing is in flight)."""
        return self._sequences < self._max_in_flight

    @property
    def pending(self) -> int:
        """Batches added and not yet released."""
        return len(self._held)

    @property
    def sequences_in_flight(self) -> int:
        """Samples submitted to the stream and not yet finished."""
        return self._sequences

    def add(
        self, key: Hashable, prompts: Sequence[PromptInput], specs: Sequence[SamplingSpec], tally: RowTally | None = None
    ) -> None:
        """Queue a batch under ``key``: stored results are read back, the rest submitted.

        A batch the stream refuses (bad sampling parameters) raises here and is not held.
        ``tally`` counts the batch's rows and tokens as its requests finish (those read back
        at once, with no tokens: they were not generated in this run).
        """
        if len(prompts) != len(specs):
            raise ValueError(f"{len(prompts)} prompts but {len(specs)} sampling specs")
        store_keys = [completion_key(self._version, self._model, p, s) for p, s in zip(prompts, specs)]
        found = self._store.get_many(store_keys) if self._store is not None else {}
        serial, self._serial = self._serial, self._serial + 1
        batch = _Pending(serial, key, [None] * len(prompts), store_keys, 0, tally=tally)
        requests = []
        for i, (prompt, spec, store_key) in enumerate(zip(prompts, specs, store_keys)):
            if store_key in found:
                batch.results[i] = from_stored(found[store_key])
            else:
                requests.append(((serial, i), prompt, spec))
                batch.sequences[i] = spec.n
        batch.missing = len(requests)
        self._stream.submit(requests)  # first: a batch the stream refuses is not held
        if self._store is not None:
            self._store.count_usage(self._step, reused=len(prompts) - len(requests), computed=len(requests))
        self._held.append(batch)
        self._by_serial[serial] = batch
        self._sequences += sum(batch.sequences.values())
        if tally is not None:
            tally.done([i for i in range(len(prompts)) if i not in batch.sequences])

    def poll(self, timeout: float) -> list[tuple[Hashable, list[list[Completion]]]]:
        """Batches now complete, in the order added, as ``(key, completions per prompt)``.

        Waits up to about ``timeout`` seconds for the stream when nothing can be released.
        Finished completions are stored before anything is returned.
        """
        if not self._ready():
            finished = self._stream.poll(timeout) if self._stream.in_flight else []
            stored = []
            done_now: dict[int, list[int]] = {}  # batch serial -> its requests finished in this poll
            tokens_now: Counter[int] = Counter()
            for (serial, i), completions in finished:
                batch = self._by_serial[serial]
                batch.results[i] = completions
                batch.missing -= 1
                self._sequences -= batch.sequences.pop(i)
                value = stored_form(completions)
                if storable_completions(value):
                    stored.append((batch.store_keys[i], value))
                done_now.setdefault(serial, []).append(i)
                if self._count_tokens:
                    tokens_now[serial] += sum(c.num_tokens for c in completions)
            if self._store is not None:
                self._store.put_many(stored)  # one transaction per poll
            for serial, requests in done_now.items():  # counted once stored
                tally = self._by_serial[serial].tally
                if tally is not None:
                    tally.done(requests, tokens_now[serial])
        released = []
        while self._ready():
            batch = self._held.popleft()
            del self._by_serial[batch.serial]
            if batch.tally is not None:
                batch.tally.close()
            released.append((batch.key, batch.results))  # type: ignore[arg-type]
        return released

    def _ready(self) -> bool:
        return bool(self._held) and self._held[0].missing == 0

    def drain(self, timeout: float = 1.0) -> list[tuple[Hashable, list[list[Completion]]]]:
        """Wait for every batch added; all of them, in order."""
        released = []
        while self._held:
            released.extend(self.poll(timeout))
        return released

    def close(self) -> None:
        """Close the stream (what is in flight is abandoned; what finished is stored)."""
        self._held.clear()
        self._by_serial.clear()
        self._sequences = 0
        self._stream.close()


def complete_in_batches(
    ordered: OrderedBatches,
    batches: Iterable[tuple[Hashable, Sequence[PromptInput], Sequence[SamplingSpec]]
                      | tuple[Hashable, Sequence[PromptInput], Sequence[SamplingSpec], RowTally | None]],
    poll_s: float = 0.05,
) -> Iterator[tuple[Hashable, list[list[Completion]]]]:
    """Each ``(key, prompts, specs)`` batch's ``(key, completions)``, in order, with later
    batches already running (as many as ``ordered`` has room for). A batch may carry a
    fourth item, the :class:`~magpie_dl.run.progress.RowTally` counting it.

    The loop a generator step or a benchmark needs; ``batches`` is read lazily. The
    stream is closed when the loop ends or is abandoned.
    """
    try:
        upcoming = iter(batches)
        exhausted = False
        while not exhausted or ordered.pending:
            while not exhausted and ordered.has_room:
                item = next(upcoming, None)
                if item is None:
                    exhausted = True
                else:
                    ordered.add(*item)
            yield from ordered.poll(poll_s)
    finally:
        ordered.close()


def cached_complete(
    store: ResultStore | None,
    step: str,
    version: str,
    llm: CompletionLLM,
    prompts: list[PromptInput],
    specs: list[SamplingSpec],
    tally: RowTally | None = None,
) -> list[list[Completion]]:
    """``llm``'s completions of one batch through the store: stored ones read back, the rest
    run on a stream of their own and stored as each finishes (failed ones are not stored).
    ``tally`` counts the batch's rows as their requests finish."""
    ordered = OrderedBatches(llm.open_stream(), store, step, version, llm.model_name,
                             count_tokens=not getattr(llm, "decodes_live", False))
    try:
        ordered.add(None, prompts, specs, tally)
        [(_, results)] = ordered.drain()
    finally:
        ordered.close()
    return results
