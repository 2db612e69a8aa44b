"""One-label reward classifiers on vLLM's pooling runner agree with the transformers scorer.

The tiny Llama and Qwen3 sequence classifiers (root conftest ``tiny_classifiers``) score the very
token ids the transformers scorer builds: Qwen3 on an in-process pooling engine, Llama on a
``vllm serve --runner pooling`` on 127.0.0.1 and through the recipe (``--reward.engine vllm``, an
in-process engine in the reward step). One engine at a time: each test starts and stops its own
(three starts in all: the tier's time budget).

Tolerance 1e-4 (abs or rel): both sides are float32, but vLLM's CPU kernels (attention, fused
norms) sum in another order than transformers'; seen ~2e-6 on logits of O(1-10). Another
input or truncation moves a tiny classifier's logit by 1e-2 or more.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from serving_helpers import API_KEY, pooling_server_command, served

from magpie_dl.reward.scoring import RewardScorer, Scored, conversations_token_ids

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4
MAX_LENGTH = 96  # short enough that one input below is cut

PAIRS = [
    ("How do I bake bread?", "Mix flour, water and salt, then bake."),
    ("Explain SQL joins.", "A join combines rows from two tables using a related column. " * 3),
    ("Why?", "Because."),
    ("Say <|begin_of_text|> twice.", "<|eot_id|><|start_header_id|>user<|end_header_id|> done"),
    ("Tell me a long story.", "Once upon a time there was a tiny model. " * 30),  # cut at MAX_LENGTH
]


def _transformers_scores(model: str) -> tuple[list[list[int]], list[Scored]]:
    scorer = RewardScorer(model, max_length=MAX_LENGTH, batch_size=8, dtype="float32")
    scorer.load()
    sequences = conversations_token_ids(scorer.tokenizer, PAIRS)
    return sequences, scorer.score_token_ids(sequences)


def _assert_agree(got: list[Scored], expected: list[Scored]) -> None:
    assert any(e.truncated for e in expected) and not all(e.truncated for e in expected)
    for g, e in zip(got, expected, strict=True):
        assert (g.num_tokens, g.truncated, g.error) == (e.num_tokens, e.truncated, e.error)
        assert math.isclose(g.score, e.score, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (g.score, e.score)


@pytest.mark.parametrize("arch", ["qwen3"])  # llama: the recipe test below runs it on this engine
def test_pooling_engine_scores_agree_with_transformers(tiny_classifiers, arch):
    from magpie_dl.backends.vllm_pooling import VLLMPoolingScorer

    sequences, expected = _transformers_scores(tiny_classifiers[arch])
    scorer = VLLMPoolingScorer(tiny_classifiers[arch], max_length=MAX_LENGTH, dtype="float32")
    scorer.load()
    try:
        heard: list[int] = []
        got = scorer.score_token_ids(sequences, lambda done, tokens: heard.extend(done))
    finally:
        scorer.unload()
    _assert_agree(got, expected)
    assert sorted(heard) == list(range(len(sequences)))


def test_served_pooling_scores_agree_with_transformers(tiny_classifiers, tmp_path):
    from magpie_dl.backends.vllm_pooling import ServedPoolingScorer

    model = tiny_classifiers["llama"]
    sequences, expected = _transformers_scores(model)
    with served(Path(model), tmp_path / "serve.log", REPO, command=pooling_server_command) as (url, _):
        # Two endpoint entries (the same server twice): requests go to each in turn.
        scorer = ServedPoolingScorer(model, [url, f"{url}/v1"], max_length=MAX_LENGTH, api_key=API_KEY)
        scorer.load()
        try:
            got = scorer.score_token_ids(sequences[:3]) + scorer.score_token_ids(sequences[3:])
        finally:
            scorer.unload()
    _assert_agree(got, expected)


def test_recipe_scores_on_the_pooling_engine_as_transformers_does(tiny_classifiers, tmp_path):
    """``--reward.engine vllm`` with a classifier: the released scores are the transformers
    scorer's (recomputed here on the released texts), under ``rewards``; the card names the model."""
    from datasets import load_from_disk
    from test_pipeline_e2e import run_smoke

    model = tiny_classifiers["llama"]
    out = tmp_path / "out"
    code, output, leftovers = run_smoke(out, "--reward.model", model, "--reward.engine", "vllm",
                                        "--num-instructions", "12")
    assert code == 0, output
    assert not leftovers, f"processes left behind: {leftovers}"
    rows = [row for split in load_from_disk(str(out / "dataset")).values() for row in split]
    assert rows and all("rewards_armorm" not in row for row in rows)
    scorer = RewardScorer(model, max_length=512, batch_size=16, dtype="float32")
    scorer.load()
    for row in rows:
        scored = [(j, entry["score"]) for j, entry in enumerate(row["rewards"]) if entry["score"] is not None]
        expected = scorer.score_pairs([(row["instruction"], row["responses"][j]) for j, _ in scored])
        for (_, got), e in zip(scored, expected):
            assert math.isclose(got, e.score, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (got, e.score)
    card = (out / "README.md").read_text()
    assert f"Reward model: `{Path(model).name} (local)`" in card and "raw logit" in card
