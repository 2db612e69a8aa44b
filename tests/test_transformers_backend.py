"""The transformers backend: real batches, per-completion seeds, stops, bans, finish reasons."""

from __future__ import annotations

import pytest

from magpie_dl.backends.base import PromptInput, SamplingSpec
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.families import FAMILIES, resolve_stops
from magpie_dl.prompts import pre_query_token_ids


@pytest.fixture(scope="module")
def backend(tiny_models):
    b = TransformersBackend(model=tiny_models["generator"], batch_size=8, dtype="float32")
    b.load()
    return b


@pytest.fixture(scope="module")
def prompt(backend):
    return PromptInput(tuple(pre_query_token_ids(backend.tokenizer, FAMILIES["llama-3.1"])))


def spec(backend, **kw):
    stops = resolve_stops(backend.tokenizer, FAMILIES["llama-3.1"].stop)
    return SamplingSpec(**{"max_tokens": 40, "stop": stops.strings, "stop_token_ids": stops.token_ids, **kw})


def test_same_seed_same_text_regardless_of_batch(backend, prompt):
    specs = [spec(backend, seed=100 + i) for i in range(12)]
    together = backend.complete([prompt] * 12, specs)
    alone = [backend.complete([prompt], [s])[0] for s in specs[:3]]
    assert [c[0].text for c in together[:3]] == [c[0].text for c in alone]
    assert len({c[0].text for c in together}) > 3  # different seeds, different queries


def test_n_children_use_seed_plus_index(backend, prompt):
    [five] = backend.complete([prompt], [spec(backend, n=5, seed=7)])
    assert len(five) == 5
    for i in range(5):
        [[single]] = backend.complete([prompt], [spec(backend, n=1, seed=7 + i)])
        assert single.text == five[i].text


def test_finish_reasons_and_token_counts(backend, prompt):
    [[short]] = backend.complete([prompt], [spec(backend, seed=1, max_tokens=2)])
    assert short.finish_reason == "length" and short.num_tokens == 2
    [[full]] = backend.complete([prompt], [spec(backend, seed=1, max_tokens=200)])
    assert full.finish_reason == "stop"
    eot = backend.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert full.token_ids[-1] in spec(backend).stop_token_ids and full.token_ids[-1] == eot
    assert "<|eot_id|>" not in full.text


def test_first_token_ban_changes_only_the_first_position(backend, prompt):
    greedy = spec(backend, temperature=0.0, max_tokens=6)
    [[plain]] = backend.complete([prompt], [greedy])
    first, second = plain.token_ids[:2]
    assert first != second
    [[banned_first]] = backend.complete([prompt], [spec(backend, temperature=0.0, max_tokens=6, first_token_ban_ids=(first,))])
    assert banned_first.token_ids[0] != first
    # Banning the token greedy picks second leaves both positions as they were.
    [[banned_second]] = backend.complete([prompt], [spec(backend, temperature=0.0, max_tokens=6, first_token_ban_ids=(second,))])
    assert banned_second.token_ids[:2] == [first, second]


def test_stop_string_cuts_the_text(backend, prompt):
    [[c]] = backend.complete([prompt], [spec(backend, seed=3, max_tokens=40)])
    word = c.text.split()[1]
    [[cut]] = backend.complete([prompt], [SamplingSpec(seed=3, max_tokens=40, stop=(word,))])
    assert cut.finish_reason == "stop" and word not in cut.text and c.text.startswith(cut.text)


def test_greedy_is_deterministic_without_a_seed(backend, prompt):
    a = backend.complete([prompt] * 2, [spec(backend, temperature=0.0)] * 2)
    assert a[0][0].text == a[1][0].text


def test_chat_interface_for_stock_distilabel_tasks(backend):
    out = backend.generate([[{"role": "user", "content": "How do I learn chess?"}]], num_generations=2,
                           max_new_tokens=20, seed=5)
    assert len(out[0]["generations"]) == 2 and out[0]["statistics"]["output_tokens"][0] > 0
