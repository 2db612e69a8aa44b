"""The stand-in at the model boundary (magpie_dl.backends.standin): seeded, long-tailed, every rare outcome."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from magpie_dl.backends.base import CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.standin import (
    DUPLICATE_QUERIES, FRAGMENT_QUERY, STAND_IN, StandInBackend, StandInEmbedder, StandInScorer, long_tail_tokens,
)
from magpie_dl.recipe.cleaning import clean_query
from magpie_dl.config.dpo import SMOLLM2_DIR
from magpie_dl.recipe.reasons import FRAGMENT, GATING_TOKENS_MISSING
from magpie_dl.reward.scoring import conversation_token_ids
from magpie_dl.curation.tagging import DIFFICULTY_SCHEMA, parse_judge_output

pytestmark = pytest.mark.skipif(not (SMOLLM2_DIR / "tokenizer.json").exists(), reason="needs models/smollm2 (make models)")


@pytest.fixture(scope="module")
def backend() -> StandInBackend:
    llm = StandInBackend(model=str(SMOLLM2_DIR), seed=3)
    llm.load()
    return llm


def _query_prompt(llm: StandInBackend) -> PromptInput:
    """A pre-query prompt (it ends where a user message starts)."""
    return PromptInput(tuple(llm.tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)))


def test_it_is_a_completion_backend_and_names_itself(backend):
    assert isinstance(backend, CompletionLLM)
    assert backend.provenance_name.startswith(STAND_IN) and backend.model_name.startswith(STAND_IN)


def test_the_same_request_gives_the_same_completions(backend):
    prompt = backend.chat_prompt([{"role": "user", "content": "How do I sort a list?"}])
    spec = SamplingSpec(n=5, max_tokens=256, seed=11)
    first = backend.complete([prompt], [spec])
    assert first == backend.complete([prompt], [spec])
    assert first != backend.complete([prompt], [SamplingSpec(n=5, max_tokens=256, seed=12)])
    with backend.open_stream() as stream:  # the streaming interface the steps use
        stream.submit([("tag", prompt, spec)])
        assert stream.poll(5.0) == [("tag", first[0])]


def test_lengths_are_long_tailed_with_about_one_in_a_hundred_cut():
    lengths = [long_tail_tokens(i / 20000, 4096, 0.12) for i in range(1, 20000)]
    cut = sum(n > 4096 for n in lengths) / len(lengths)
    assert 0.004 < cut < 0.02
    assert sorted(lengths)[len(lengths) // 2] == pytest.approx(0.12 * 4096, rel=0.02)


def test_queries_and_responses_hold_every_rare_outcome(backend):
    specs = [SamplingSpec(max_tokens=64, seed=s) for s in range(3000)]
    queries = [c[0] for c in backend.complete([_query_prompt(backend)] * len(specs), specs)]
    texts = Counter(q.text for q in queries)
    finish = Counter(q.finish_reason for q in queries)
    assert finish["error"] and finish["length"] and texts[""] > finish["error"]
    assert texts[FRAGMENT_QUERY] and clean_query(FRAGMENT_QUERY).reason == FRAGMENT
    assert all(texts[q] > 1 for q in DUPLICATE_QUERIES)
    assert any(t.endswith(("?!", "!?", "??", "?!!")) for t in texts)  # near duplicates
    prompt = backend.chat_prompt([{"role": "user", "content": "Explain tides."}])
    responses = backend.complete([prompt] * 600, [SamplingSpec(n=5, max_tokens=256, seed=s) for s in range(600)])
    flat = Counter(c.finish_reason for row in responses for c in row)
    assert flat["error"] and flat["length"] and sum(not c.text for row in responses for c in row if c.finish_reason == "stop")
    assert any(sum(c.finish_reason == "error" for c in row) >= 4 for row in responses)  # fewer than two usable


def test_judge_answers_follow_the_schema_except_the_injected_failures(backend):
    prompt = backend.chat_prompt([{"role": "user", "content": "judge this"}])
    specs = [SamplingSpec(max_tokens=512, seed=s, json_schema=DIFFICULTY_SCHEMA) for s in range(400)]
    parsed = [parse_judge_output(c[0].text, DIFFICULTY_SCHEMA) for c in backend.complete([prompt] * 400, specs)]
    failures = sum(value is None for value, _ in parsed)
    assert 0 < failures < 40


def test_the_scorer_gives_nan_missing_gating_and_ties():
    scorer = StandInScorer(str(SMOLLM2_DIR), max_length=64)
    scorer.load()
    rows = [[conversation_token_ids(scorer.tokenizer, f"question {r}", f"answer {r} {j} " * (1 + 20 * (j == 4)))
             for j in range(5)] for r in range(800)]
    scored = [scorer.score_token_ids(row) for row in rows]
    errors = Counter(s.error.split(":")[0] for row in scored for s in row if s.error)
    assert errors["non_finite_score"] and errors[GATING_TOKENS_MISSING]
    assert any(s.truncated for row in scored for s in row)
    finite = [[s.score for s in row if s.score is not None and not math.isnan(s.score)] for row in scored]
    assert any(len(set(row)) == 1 and len(row) > 1 for row in finite)
    assert any(1 < len(set(row)) < len(row) for row in finite)


def test_the_encoder_gives_punctuation_variants_the_same_vector():
    vectors = StandInEmbedder().encode(["How do I sort, a list??", "how do I sort a list?", "Something else"])
    assert vectors[0] == pytest.approx(vectors[1]) and abs(float(vectors[0] @ vectors[2])) < 0.9
