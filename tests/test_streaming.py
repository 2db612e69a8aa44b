"""Generation streams across batches: whole batches, in order, bounded, stored as they finish.

The engine is faked at the model boundary only where the order in which requests finish
must be controlled (a real tiny model finishes them in whatever order its samples end);
the step loop is tested in a real distilabel pipeline on the tiny transformers model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from typing import ClassVar

import pytest
from distilabel.steps import LoadDataFromDicts
from pydantic import PrivateAttr

from magpie_dl.backends.base import CallStream, Completion, CompletionLLM, CompletionStream, PromptInput, Request, SamplingSpec
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.distilabel_compat import streaming
from magpie_dl.run.store import ResultStore
from magpie_dl.run.streaming import OrderedBatches, cached_complete, complete_in_batches


def sample(prompt: PromptInput, spec: SamplingSpec) -> list[Completion]:
    """What the fake engine answers: decided by the prompt and the seed, like a seeded engine."""
    return [
        Completion(f"{prompt.token_ids[0]}:{spec.seed}+{child}", [spec.seed or 0] * spec.max_tokens, "length")
        for child in range(spec.n)
    ]


class ScriptedLLM(CompletionLLM):
    """A fake engine whose stream finishes the request with the fewest tokens left first,
    one per poll: a short request submitted later overtakes a long one submitted earlier."""

    calls: ClassVar[list] = []
    _streams: list = PrivateAttr(default_factory=list)

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        self.calls.append([p.token_ids[0] for p in prompts])
        return [sample(p, s) for p, s in zip(prompts, sampling)]

    def open_stream(self) -> ScriptedStream:
        stream = ScriptedStream()
        self._streams.append(stream)
        return stream


class ScriptedStream(CompletionStream):
    def __init__(self) -> None:
        self.running: list[tuple[Hashable, PromptInput, SamplingSpec]] = []
        self.finished_order: list[int] = []  # first prompt token of each request, as finished
        self.peak_sequences = 0
        self.closed = False
        self.fail_next_poll = False

    def submit(self, requests: Sequence[Request]) -> None:
        self.running.extend(requests)
        self.peak_sequences = max(self.peak_sequences, sum(spec.n for _, _, spec in self.running))

    def poll(self, timeout: float) -> list[tuple[Hashable, list[Completion]]]:
        if self.fail_next_poll:
            raise RuntimeError("engine died")
        if not self.running:
            return []
        shortest = min(self.running, key=lambda r: r[2].max_tokens)
        self.running.remove(shortest)
        tag, prompt, spec = shortest
        self.finished_order.append(prompt.token_ids[0])
        return [(tag, sample(prompt, spec))]

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def close(self) -> None:
        self.closed = True


def batch(first: int, lengths: list[int], n: int = 1) -> tuple[list[PromptInput], list[SamplingSpec]]:
    """Prompts ``first, first + 1, ...`` with the given lengths (seed = the prompt's number)."""
    prompts = [PromptInput((first + i, 7)) for i in range(len(lengths))]
    specs = [SamplingSpec(n=n, max_tokens=length, seed=first + i) for i, length in enumerate(lengths)]
    return prompts, specs


@pytest.fixture()
def llm() -> ScriptedLLM:
    ScriptedLLM.calls = []
    return ScriptedLLM(model="fake")


def test_batches_come_back_whole_and_in_order_when_requests_finish_out_of_order(llm):
    # Batch 0 holds the longest request: every later batch finishes before it does.
    batches = [(k, *batch(10 * k, [50 if k == 0 else 3, 2, 4])) for k in range(4)]
    ordered = OrderedBatches(llm.open_stream(), None, "responses", "1", llm.model_name)
    released = list(complete_in_batches(ordered, batches, poll_s=0))
    [stream] = llm._streams
    assert stream.finished_order[-1] == 0  # the engine finished batch 0 last...
    assert [key for key, _ in released] == [0, 1, 2, 3]  # ...yet it came back first
    for (key, prompts, specs), (_, results) in zip(batches, released):
        assert results == [sample(p, s) for p, s in zip(prompts, specs)]
    assert stream.closed


def test_a_later_batch_is_held_until_every_earlier_one_is_complete(llm):
    ordered = OrderedBatches(llm.open_stream(), None, "responses", "1", llm.model_name)
    ordered.add("slow", *batch(0, [9, 1]))
    ordered.add("fast", *batch(10, [1]))
    seen = []
    for _ in range(2):  # the fast batch and one of the slow batch's requests finish
        seen += ordered.poll(0)
    assert seen == [] and ordered.pending == 2
    while ordered.pending:
        seen += ordered.poll(0)
    assert [key for key, _ in seen] == ["slow", "fast"]


def test_in_flight_is_bounded_and_batches_overlap(llm):
    # 10 batches of 2 prompts x n=2 = 4 sequences each; room for 6 sequences.
    batches = [(k, *batch(10 * k, [5, 1], n=2)) for k in range(10)]
    ordered = OrderedBatches(llm.open_stream(), None, "responses", "1", llm.model_name, max_in_flight=6)
    assert len(list(complete_in_batches(ordered, batches, poll_s=0))) == 10
    [stream] = llm._streams
    assert 4 < stream.peak_sequences <= 6 + 4 - 1  # more than one batch, never past the bound + one batch
    with pytest.raises(ValueError, match="max_in_flight"):
        OrderedBatches(llm.open_stream(), None, "responses", "1", llm.model_name, max_in_flight=0)


def test_each_completion_is_stored_as_it_finishes(llm, tmp_path):
    store = ResultStore(tmp_path)
    slow, fast = batch(0, [40, 1]), batch(10, [1, 2])
    ordered = OrderedBatches(llm.open_stream(), store, "responses", "1", llm.model_name)
    ordered.add(0, *slow)
    ordered.add(1, *fast)
    for _ in range(3):  # everything but the slow request finishes; nothing can be released yet
        assert ordered.poll(0) == []
    # A kill here (the stream is simply dropped) loses only the request still in flight.
    assert len(store) == 3
    prompts, specs = slow[0] + fast[0], slow[1] + fast[1]
    results = cached_complete(store, "responses", "1", llm, prompts, specs)
    assert llm._streams[-1].finished_order == [0]  # only the unfinished request is computed again
    assert results == [sample(p, s) for p, s in zip(prompts, specs)]
    assert store.usage()["responses"] == {"reused": 3, "computed": 1 + 4}


def test_stored_results_are_not_sent_again_and_errors_are_not_stored(tmp_path):
    class FailingFirst(ScriptedLLM):
        def open_stream(self) -> CompletionStream:
            return CallStream(self)

        def complete(self, prompts, sampling):
            done = super().complete(prompts, sampling)
            return [[Completion("", [], "error", "refused")] if p.token_ids[0] == 0 else d for p, d in zip(prompts, done)]

    ScriptedLLM.calls = []
    llm = FailingFirst(model="fake")
    store = ResultStore(tmp_path)
    for _ in range(2):
        ordered = OrderedBatches(llm.open_stream(), store, "responses", "1", llm.model_name)
        [(_, results)] = list(complete_in_batches(ordered, [("only", *batch(0, [3, 3]))]))
        assert results[0][0].finish_reason == "error" and results[1][0].finish_reason == "length"
    assert ScriptedLLM.calls == [[0, 1], [0]]  # the failed request is tried again, the good one read back


def test_the_default_stream_makes_one_complete_call_per_submission(llm):
    """Backends without a stream of their own: the same calls, with the same prompts, as batch by batch."""
    ordered = OrderedBatches(CallStream(llm), None, "responses", "1", llm.model_name)
    batches = [(k, *batch(10 * k, [3] * (k + 1))) for k in range(3)]
    released = list(complete_in_batches(ordered, batches))
    assert ScriptedLLM.calls == [[0], [10, 11], [20, 21, 22]]
    assert [r for _, r in released] == [[sample(p, s) for p, s in zip(ps, ss)] for _, ps, ss in batches]


def test_a_failed_backend_raises_from_poll(llm):
    ordered = OrderedBatches(llm.open_stream(), None, "responses", "1", llm.model_name)
    ordered.add(0, *batch(0, [2]))
    llm._streams[0].fail_next_poll = True
    with pytest.raises(RuntimeError, match="engine died"):
        ordered.poll(0)


# --- the step loop inside a real distilabel pipeline (tiny transformers model) --------------


class ThreadRecordingBackend(TransformersBackend):
    """The tiny transformers backend, noting which thread each ``complete`` call ran on and
    how many requests were still in flight when each batch was submitted to its stream."""

    record: str
    delay_s: float = 0.0  # a slower engine: the next batch surely arrives while one runs

    def complete(self, prompts, sampling):
        self.note(f"complete {threading.current_thread().name} {len(prompts)}")
        time.sleep(self.delay_s)
        return super().complete(prompts, sampling)

    def open_stream(self) -> CallStream:
        backend = self
        backend.note("open")

        class NotingStream(CallStream):
            def submit(self, requests):
                backend.note(f"submit {self.in_flight}")
                super().submit(requests)

        return NotingStream(self)

    def note(self, line: str) -> None:
        with open(self.record, "a") as f:
            f.write(line + "\n")


def response_rows(count: int) -> list[dict]:
    topics = ["chess", "bread", "tax", "git", "sql", "tea", "jazz", "rust", "yoga", "maps", "owls"]
    return [{"uuid": f"u{i}", "instruction": f"Tell me about {topics[i % len(topics)]} ({i})."} for i in range(count)]


def test_the_response_step_streams_inside_a_pipeline_and_keeps_rows_in_order(tiny_models, tmp_path):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from magpie_dl.steps.responses import MultiResponseGeneration

    def step(**kw) -> MultiResponseGeneration:
        llm = ThreadRecordingBackend(
            model=tiny_models["generator"], dtype="float32", record=str(tmp_path / "calls"), delay_s=0.5
        )
        return MultiResponseGeneration(
            llm=llm, num_generations=2, max_tokens=12, seed=5, cache_dir=str(tmp_path / "store"), **kw
        )

    rows = response_rows(11)
    with Pipeline(name="streaming-responses", cache_dir=str(tmp_path / "distilabel")) as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=3)
        respond = step(name="responses", input_batch_size=3)
        load >> respond
    with streaming(pipeline):
        out = pipeline.run(use_cache=False)["default"]["train"].to_list()
    notes = [line.split() for line in (tmp_path / "calls").read_text().split("\n")[:-1]]
    calls = [n[1:] for n in notes if n[0] == "complete"]
    # Batches went through the step's stream (one complete() per batch, off the step's
    # own thread), not through distilabel's one-batch-at-a-time process() calls...
    assert [c[0].startswith("completion-stream") for c in calls] == [True] * 4
    assert [int(c[1]) for c in calls] == [3, 3, 3, 2]
    # ...and a batch was taken while an earlier one was still being generated (the
    # generator upstream ran ahead instead of waiting for the step to finish each batch).
    assert any(int(n[1]) > 0 for n in notes if n[0] == "submit")
    assert [r["uuid"] for r in out] == [r["uuid"] for r in rows]

    # The same rows as the step run standalone, batch by batch, on a fresh store.
    alone = step(name="alone")
    alone.cache_dir = str(tmp_path / "other-store")
    alone.load()
    expected = [row for start in range(0, 11, 3) for row in next(alone.process([dict(r) for r in rows[start:start + 3]]))]
    keys = ["generations", "finish_reasons", "generation_tokens", "gen_response_configs"]
    assert [{k: r[k] for k in keys} for r in out] == [{k: r[k] for k in keys} for r in expected]
    assert len(ResultStore(tmp_path / "store")) == 11



def test_in_a_pipeline_of_one_s_own_the_step_runs_a_batch_at_a_time_unless_asked(tiny_models, tmp_path):
    """Importing or using our step changes nothing in distilabel: without ``streaming()``
    (the documented call) its batches go through distilabel's own loop and ``process()``,
    even in a process where another run streamed."""
    from distilabel.pipeline import Pipeline

    from magpie_dl.distilabel_compat import install_streaming_loop
    from magpie_dl.steps.responses import MultiResponseGeneration

    install_streaming_loop()  # as after an earlier streamed run in this process
    # A slow engine, as in the streaming test above, where the next batch is taken while one runs.
    llm = ThreadRecordingBackend(model=tiny_models["generator"], dtype="float32", record=str(tmp_path / "calls"), delay_s=0.5)
    rows = response_rows(7)
    with Pipeline(name="plain-responses", cache_dir=str(tmp_path / "distilabel")) as pipeline:
        LoadDataFromDicts(name="load", data=rows, batch_size=3) >> MultiResponseGeneration(
            name="responses", llm=llm, num_generations=2, max_tokens=6, seed=5, input_batch_size=3)
    out = pipeline.run(use_cache=False)["default"]["train"].to_list()
    notes = (tmp_path / "calls").read_text().split("\n")[:-1]
    # One batch at a time, each through a stream of its own (the streaming loop opens one for all).
    assert notes.count("open") == 3 and [n for n in notes if n.startswith("submit")] == ["submit 0"] * 3
    assert [n.split()[-1] for n in notes if n.startswith("complete")] == ["3", "3", "1"]
    assert [r["uuid"] for r in out] == [r["uuid"] for r in rows]

def test_a_batch_the_stream_refuses_is_not_held(llm):
    ordered = OrderedBatches(llm.open_stream(), None, "responses", "1", llm.model_name)
    llm._streams[0].submit = lambda requests: (_ for _ in ()).throw(ValueError("bad ban ids"))
    with pytest.raises(ValueError, match="bad ban ids"):
        ordered.add(0, *batch(0, [2]))
    assert ordered.pending == 0 and ordered.sequences_in_flight == 0


def test_a_failing_batch_is_sent_empty_in_its_place_and_the_others_go_on(tiny_models, tmp_path):
    """As distilabel's own loop: the failed batch's outputs are None, the run continues, order holds."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from magpie_dl.steps.responses import MultiResponseGeneration

    rows = response_rows(7)
    rows[4]["instruction"] = None  # the step cannot build this row's prompt: batch 1 (rows 3-5) fails
    with Pipeline(name="streaming-failure", cache_dir=str(tmp_path / "distilabel")) as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=3)
        respond = MultiResponseGeneration(
            name="responses", llm=TransformersBackend(model=tiny_models["generator"], dtype="float32"),
            num_generations=2, max_tokens=6, seed=5, input_batch_size=3,
        )  # fmt: skip
        load >> respond
    with streaming(pipeline):
        out = pipeline.run(use_cache=False)["default"]["train"].to_list()
    assert [r["uuid"] for r in out] == [r["uuid"] for r in rows]
    assert [r["generations"] is None for r in out] == [False] * 3 + [True] * 3 + [False]


def test_fixed_length_sampling_keeps_existing_store_keys():
    """min_tokens / ignore_eos (benchmarks) are recorded only when set: keys stored before them stay valid."""
    assert set(SamplingSpec().as_config()) == {
        "n", "temperature", "top_p", "max_tokens", "seed", "stop", "stop_token_ids", "first_token_ban_ids",
    }  # fmt: skip
    fixed = SamplingSpec(min_tokens=5, max_tokens=5, ignore_eos=True).as_config()
    assert fixed["min_tokens"] == 5 and fixed["ignore_eos"] is True
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingSpec(min_tokens=9, max_tokens=5)
    with pytest.raises(ValueError, match="vLLM backend"):
        TransformersBackend(model="unused").complete([PromptInput((1,))], [SamplingSpec(min_tokens=1)])


class FinishNotingBackend(ThreadRecordingBackend):
    """Notes ``finished`` as each ``complete`` call returns."""

    def complete(self, prompts, sampling):
        done = super().complete(prompts, sampling)
        self.note("finished")
        return done


class NotingLoad(LoadDataFromDicts):
    """An instant loader noting ``produced`` for each batch it yields."""

    record: str

    def process(self, offset: int = 0):
        for produced in super().process(offset):
            with open(self.record, "a") as f:
                f.write("produced\n")
            yield produced


def noted_pipeline(name: str, tmp_path, tiny_models, rows: int, num_generations: int, delay_s: float):
    """An instant loader (one row a batch) into a response step whose stream holds one batch
    of ``num_generations`` sequences and whose calls take ``delay_s``; both note what they do
    in the returned record."""
    from distilabel.pipeline import Pipeline

    from magpie_dl.steps.responses import MultiResponseGeneration

    record = tmp_path / "notes"
    with Pipeline(name=name, cache_dir=str(tmp_path / "distilabel")) as pipeline:
        load = NotingLoad(name="load", data=response_rows(rows), batch_size=1, record=str(record))
        respond = MultiResponseGeneration(
            name="responses", num_generations=num_generations, max_tokens=2, seed=5, input_batch_size=1,
            max_in_flight=num_generations,
            llm=FinishNotingBackend(model=tiny_models["generator"], dtype="float32", record=str(record), delay_s=delay_s),
        )  # fmt: skip
        load >> respond
    return pipeline, record


def test_a_fast_generator_runs_only_a_bounded_way_ahead_of_the_streaming_step(tiny_models, tmp_path):
    """The generator is asked for more while its batches can still be taken, not for the
    whole set: batches produced but not yet finished by the step stay bounded (by what the
    step's stream could take plus two per replica; here 1 + 2), where an unbounded run-ahead
    lets an instant loader queue every batch while the step has finished a few."""
    pipeline, record = noted_pipeline("bounded-run-ahead", tmp_path, tiny_models, 30, num_generations=1, delay_s=0.15)
    with streaming(pipeline):
        out = pipeline.run(use_cache=False)["default"]["train"].to_list()
    assert [r["uuid"] for r in out] == [r["uuid"] for r in response_rows(30)]
    ahead, most = 0, 0
    for line in record.read_text().split("\n"):
        ahead += {"produced": 1, "finished": -1}.get(line, 0)
        most = max(most, ahead)
    # Allowed beyond the 3 waiting: a batch in the generator, one on its way through the
    # driver, one the step has finished but not yet handed back.
    assert 1 <= most <= 3 + 3, most


def test_a_stop_ends_a_full_streaming_step_at_once_not_after_what_it_holds_and_has_queued(tiny_models, tmp_path):
    """What a SIGTERM or Ctrl-C does to a run (``pipeline._stop()``, the call the run's
    signal handler makes) while the step's stream is full and batches wait behind it:
    the step stops within about a call, instead of finishing every batch taken and queued
    before distilabel's stop marker. Here a batch is one row of 8 samples: the stream holds
    one batch (8 sequences), the generator runs ahead up to 8 + 2 batches (one per row),
    so up to 9 wait behind it (0.3 s a call)."""
    pipeline, record = noted_pipeline("stop-a-full-stream", tmp_path, tiny_models, 40, num_generations=8, delay_s=0.3)

    def stop_once_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if record.exists() and record.read_text().count("finished") >= 3:
                with open(record, "a") as f:
                    f.write("stop\n")
                pipeline._stop()
                return
            time.sleep(0.05)

    stopper = threading.Thread(target=stop_once_busy)
    stopper.start()
    started = time.monotonic()
    with streaming(pipeline):
        pipeline.run(use_cache=False)
    stopper.join()
    notes = record.read_text().split("\n")
    assert "stop" in notes, "the step never got busy"
    after = notes[notes.index("stop"):]
    # The call running when the stop came (a call cannot be interrupted) and, on a slow
    # machine, one or two started before the driver passed the stop on; not the ~10 waiting.
    assert after.count("finished") <= 3, after
    assert time.monotonic() - started < 60
