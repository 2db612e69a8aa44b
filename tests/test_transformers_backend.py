"""The transformers backend: real batches, per-completion seeds, stops, bans, finish reasons."""

from __future__ import annotations

import pytest

from magpie_dl.backends.base import PromptInput, SamplingSpec
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.templates.families import FAMILIES, resolve_stops
from magpie_dl.templates.prompts import pre_query_token_ids


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
    # A stop built from the sample, not hoped for from the model: the token this seed writes
    # at position 5 becomes a stop token, so the same draws must stop at its first occurrence.
    [[free]] = backend.complete([prompt], [SamplingSpec(seed=1, max_tokens=6)])
    assert free.finish_reason == "length" and free.num_tokens == 6
    stop = free.token_ids[5]
    first = free.token_ids.index(stop)
    [[stopped]] = backend.complete([prompt], [SamplingSpec(seed=1, max_tokens=6, stop_token_ids=(stop,))])
    assert stopped.finish_reason == "stop" and stopped.num_tokens == first + 1
    # The stop token is counted in token_ids; the text ends before it (vLLM's way).
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.text == backend.tokenizer.decode(free.token_ids[:first], skip_special_tokens=True)


def test_first_token_ban_changes_only_the_first_position(backend, prompt):
    greedy = spec(backend, temperature=0.0, max_tokens=12)
    [[plain]] = backend.complete([prompt], [greedy])
    first = plain.token_ids[0]
    later = next(t for t in plain.token_ids[1:] if t != first)  # a token greedy writes later, not first
    [[banned_first]] = backend.complete([prompt], [spec(backend, temperature=0.0, max_tokens=12, first_token_ban_ids=(first,))])
    assert banned_first.token_ids[0] != first
    # Banning a token the greedy path only writes later leaves the whole path as it was.
    [[banned_later]] = backend.complete([prompt], [spec(backend, temperature=0.0, max_tokens=12, first_token_ban_ids=(later,))])
    assert banned_later.token_ids == plain.token_ids


def test_stop_string_cuts_the_text(backend, prompt):
    [[c]] = backend.complete([prompt], [SamplingSpec(seed=3, max_tokens=40)])
    stop = c.text[len(c.text) // 2 :][:4]  # a string this sample writes, whatever it writes
    assert stop
    [[cut]] = backend.complete([prompt], [SamplingSpec(seed=3, max_tokens=40, stop=(stop,))])
    assert cut.finish_reason == "stop" and cut.text == c.text[: c.text.index(stop)]


def test_greedy_is_deterministic_without_a_seed(backend, prompt):
    a = backend.complete([prompt] * 2, [spec(backend, temperature=0.0)] * 2)
    assert a[0][0].text == a[1][0].text


def test_chat_interface_for_stock_distilabel_tasks(backend):
    out = backend.generate([[{"role": "user", "content": "How do I learn chess?"}]], num_generations=2,
                           max_new_tokens=20, seed=5)
    assert len(out[0]["generations"]) == 2 and out[0]["statistics"]["output_tokens"][0] > 0


def test_sampling_follows_the_distribution_and_the_nucleus():
    """Inverse-CDF sampling with each row's own generator: frequencies within 0.02 of the
    probabilities over 20,000 draws (about 6 standard deviations), nothing outside top_p."""
    import torch

    from magpie_dl.backends.transformers import _sample_rows

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0], [0.0, 1.0, 2.0, -1.0]])
    probs = torch.softmax(logits[0], dim=-1)
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    counts = torch.zeros(2, 4)
    for _ in range(20_000):
        picks = _sample_rows(logits, torch.ones(2), torch.tensor([1.0, 0.7]), generators)
        counts[0, picks[0]] += 1
        counts[1, picks[1]] += 1
    freq = counts / 20_000
    assert torch.allclose(freq[0], probs, atol=0.02)
    # top_p 0.7 keeps tokens 2 and 1 (0.64 + 0.24 >= 0.7), renormalised.
    kept = probs[[2, 1]] / probs[[2, 1]].sum()
    assert freq[1, 0] == 0 and freq[1, 3] == 0
    assert torch.allclose(freq[1, [2, 1]], kept, atol=0.02)
    greedy = _sample_rows(logits, torch.zeros(2), torch.ones(2), generators)
    assert greedy.tolist() == [2, 2]


def test_nucleus_from_the_most_likely_tokens_picks_as_the_full_sort():
    """top_p < 1 sorts only the NUCLEUS_CANDIDATES most likely tokens when they hold the row's
    mass (a full sort of a 49K vocabulary cost half a SmolLM2 decoding step); the picks must
    equal those of a full sort, also for rows that fall back to it (flat, or top_p 1)."""
    import torch

    from magpie_dl.backends.transformers import NUCLEUS_CANDIDATES, _sample_rows, _sorted_nucleus_candidates

    def full_sort_picks(logits, temperature, top_p, generators):  # the sampler before the change
        probs = torch.softmax(logits / temperature.clamp(min=1e-6).unsqueeze(1), dim=-1)
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1), 0.0)
        cdf = probs.cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=g) for g in generators])
        picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        return order.gather(1, picks.clamp(max=probs.shape[-1] - 1).unsqueeze(1)).squeeze(1)

    vocab = 6 * NUCLEUS_CANDIDATES
    torch.manual_seed(0)
    peaked = torch.randn(4, vocab) * 4  # the top candidates hold most of the mass
    flat = torch.randn(2, vocab) * 0.1  # they hold ~1/6 of it: the full sort
    temperature = torch.tensor([0.8, 1.0, 0.5, 1.2])
    cases = [
        (peaked, temperature, torch.tensor([0.9, 0.95, 0.5, 0.9]), True),
        (flat, temperature[:2], torch.tensor([0.9, 0.9]), False),
        (peaked, temperature, torch.tensor([0.9, 1.0, 0.9, 0.9]), False),  # one row keeps everything
    ]
    for logits, temp, top_p, candidates_suffice in cases:
        probs = torch.softmax(logits / temp.unsqueeze(1), dim=-1)
        sorted_probs, _ = _sorted_nucleus_candidates(probs, top_p)
        assert (sorted_probs.shape[-1] == NUCLEUS_CANDIDATES) is candidates_suffice
        for seed in range(50):
            ours = _sample_rows(logits, temp, top_p, [torch.Generator().manual_seed(seed + r) for r in range(len(logits))])
            ref = full_sort_picks(logits, temp, top_p, [torch.Generator().manual_seed(seed + r) for r in range(len(logits))])
            assert ours.tolist() == ref.tolist()
