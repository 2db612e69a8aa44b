"""The result store keeps what a rerun rebuilds rows from, not every completion's token ids.

A full run stores 500K prompts x 5 samples; their token ids as JSON were most of the
store (several GB) and nothing reads them back. Completions come from the real tiny
model, through both ways of storing them (one call, and the stream as each finishes).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from magpie_dl.backends.base import CallStream, Completion, PromptInput, SamplingSpec
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.run.store import STORE_FILE, ResultStore, completion_key, stored_form
from magpie_dl.run.streaming import OrderedBatches, cached_complete, complete_in_batches


@pytest.fixture(scope="module")
def backend(tiny_models):
    backend = TransformersBackend(model=tiny_models["generator"], dtype="float32", batch_size=4)
    backend.load()
    return backend


def requests(backend: TransformersBackend) -> tuple[list[PromptInput], list[SamplingSpec]]:
    tok = backend.tokenizer
    prompts = [PromptInput(tuple(tok.encode(text, add_special_tokens=False))) for text in ("Hello there", "How do I")]
    specs = [SamplingSpec(n=2, temperature=0.8, max_tokens=12, seed=seed) for seed in (3, 4)]
    return prompts, specs


def stored_records(directory) -> list[dict]:
    with sqlite3.connect(directory / STORE_FILE) as db:
        return [c for (value,) in db.execute("SELECT value FROM results") for c in json.loads(value)]


@pytest.mark.parametrize("way", ["one call", "stream"])
def test_a_stored_completion_holds_its_text_finish_reason_and_count_not_its_token_ids(backend, tmp_path, way):
    prompts, specs = requests(backend)
    store = ResultStore(tmp_path)
    if way == "one call":
        fresh = cached_complete(store, "responses", "1", backend, prompts, specs)
    else:
        ordered = OrderedBatches(backend.open_stream(), store, "responses", "1", backend.model_name)
        [(_, fresh)] = list(complete_in_batches(ordered, [("only", prompts, specs)]))
    assert all(c.num_tokens > 0 for cs in fresh for c in cs)

    records = stored_records(tmp_path)
    assert len(records) == 4
    assert all(set(record) == {"text", "finish_reason", "num_tokens"} for record in records), records

    # A rerun reads back the same completions (text, finish reason, token count), computing nothing.
    again = cached_complete(store, "responses", "1", backend, prompts, specs)
    assert again == fresh
    engine = backend.complete(prompts, specs)  # seeded: the same samples, with their ids
    assert [[c.num_tokens for c in cs] for cs in again] == [[len(c.token_ids) for c in cs] for cs in engine]
    assert store.usage()["responses"]["reused"] == 2


def test_a_record_stored_with_its_token_ids_reads_back_the_same(tmp_path):
    """Stores written before the ids were left out resume as they are: same keys, same completions."""
    prompt, spec = PromptInput((5, 6)), SamplingSpec(n=1, max_tokens=4, seed=1)
    store = ResultStore(tmp_path)
    old = [{"text": "Hi.", "token_ids": [11, 12, 13], "finish_reason": "stop", "error": None}]
    store.put_many([(completion_key("1", "m", prompt, spec), old)])

    class Unused:
        model_name = "m"

        def complete(self, *_):
            raise AssertionError("a stored result was computed again")

        def open_stream(self) -> CallStream:
            return CallStream(self)  # type: ignore[arg-type]

    [[completion]] = cached_complete(store, "responses", "1", Unused(), [prompt], [spec])  # type: ignore[arg-type]
    assert (completion.text, completion.finish_reason, completion.num_tokens) == ("Hi.", "stop", 3)
    assert stored_form([completion]) == [{"text": "Hi.", "finish_reason": "stop", "num_tokens": 3}]


def test_a_failed_completion_keeps_its_error_in_the_stored_form():
    """Failed completions are not stored, but their form says why (the check that skips them reads it)."""
    [form] = stored_form([Completion("", [], "error", "refused")])
    assert form == {"text": "", "finish_reason": "error", "num_tokens": 0, "error": "refused"}
