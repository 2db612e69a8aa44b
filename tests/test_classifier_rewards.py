"""One-label sequence classifiers as reward models (Skywork-Reward-V2's architectures, tiny).

The scorer's inputs are checked against ids built here from the pieces (one BOS, the texts as
text), its scores against an independent forward pass of ``AutoModelForSequenceClassification``
on each conversation alone; truncation at the model's own limit is recorded.
"""

from __future__ import annotations

import math

import pytest
import torch

from magpie_dl.reward.scoring import RewardScorer

# Compared within 1e-4 (abs or rel): float32, the scorer's batch (right padding, other
# matmul shapes) against a batch of one; the tiny classifiers' logits are O(1) and another
# input moves them by 1e-2 or more.
TOLERANCE = 1e-4

PAIRS = [
    ("How do I bake bread?", "Mix flour, water and salt, then bake."),
    ("Explain SQL joins.", "A join combines rows from two tables using a related column. " * 6),
    ("Why?", "Because."),
    # Special-token strings inside user and model text are characters, not control tokens.
    ("Say <|begin_of_text|> twice.", "<|eot_id|><|start_header_id|>user<|end_header_id|> done"),
]


def _expected_ids(tokenizer, user: str, assistant: str) -> list[int]:
    """The Llama-3 template over [user, assistant] built by hand: BOS once, markup as control
    ids, texts encoded as text (special-token strings split)."""
    def markup(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    def plain(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    return ([tokenizer.bos_token_id] + markup(header.format("user")) + plain(user) + markup("<|eot_id|>")
            + markup(header.format("assistant")) + plain(assistant) + markup("<|eot_id|>"))


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def classifier(request, tiny_classifiers):
    path = tiny_classifiers[request.param]
    scorer = RewardScorer(path, max_length=512, batch_size=8, dtype="float32")
    scorer.load()
    yield path, scorer
    scorer.unload()


def test_tiny_classifiers_are_one_label_sequence_classifiers(tiny_classifiers):
    import json
    from pathlib import Path

    for arch, expected in (("llama", "LlamaForSequenceClassification"), ("qwen3", "Qwen3ForSequenceClassification")):
        config = json.loads((Path(tiny_classifiers[arch]) / "config.json").read_text())
        # One label: transformers 5 writes it as a one-entry id2label (as Skywork-Reward-V2's config has).
        assert config["architectures"] == [expected] and len(config["id2label"]) == 1
        assert config["pad_token_id"] is not None and (Path(tiny_classifiers[arch]) / "model.safetensors").is_file()


def test_scores_are_the_raw_logit_of_an_independent_forward_pass(classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, scorer = classifier
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    scored = scorer.score_pairs(PAIRS)
    for (user, assistant), result in zip(PAIRS, scored):
        ids = _expected_ids(tokenizer, user, assistant)
        assert ids.count(tokenizer.bos_token_id) == 1
        with torch.inference_mode():
            logit = model(input_ids=torch.tensor([ids])).logits[0, 0].item()  # no sigmoid: the raw logit
        assert result.num_tokens == len(ids) and not result.truncated and result.error is None
        assert math.isclose(result.score, logit, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (user, result.score, logit)
        assert result.objectives is None  # only ArmoRM has per-objective rewards
    # Scores differ between responses (a constant head would pass the comparison vacuously).
    assert len({round(r.score, 3) for r in scored}) == len(PAIRS)


def test_inputs_longer_than_the_model_takes_are_cut_at_its_end_and_marked(tiny_models, tmp_path):
    from magpie_dl.local import tiny

    path = tiny.build_classifier(tmp_path / "short", "llama", tiny_models["generator"], max_position_embeddings=64)
    scorer = RewardScorer(path, max_length=4096, batch_size=4, dtype="float32")  # asks for more than the model takes
    scorer.load()
    assert scorer.max_length == 64
    long_pair, short_pair = ("Tell me a story.", "Once upon a time " * 40), ("Hi", "Hello.")
    long_result, short_result = scorer.score_pairs([long_pair, short_pair])
    assert long_result.truncated and long_result.num_tokens == 64 and long_result.score is not None
    assert not short_result.truncated
    # The start is kept: the score is the one of the first 64 tokens.
    from magpie_dl.reward.scoring import conversation_token_ids

    head = conversation_token_ids(scorer.tokenizer, *long_pair)[:64]
    assert math.isclose(long_result.score, scorer.score_token_ids([head])[0].score, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
