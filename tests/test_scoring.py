"""Reward scoring: batch invariance, ArmoRM's `score`, truncation, non-finite scores.

``scorer`` is the tiny ArmoRM the smoke recipe uses; ``classifier`` a plain one-label
Llama sequence classifier (FsfairX / Skywork style) on the same backbone.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from magpie_dl.reward.scoring import RewardScorer, conversation_token_ids, extract_scores, plan_batches

PAIRS = [
    ("How do I bake bread?", "Mix flour, water and salt, then bake."),
    ("What is compound interest?", "Interest on interest."),
    ("Write a poem about the sea.", "Waves " * 40),
    ("Hi there, can you help me plan a road trip across the country?", "Sure."),
    ("Explain SQL joins.", "A join combines rows from two tables using a related column. " * 5),
    ("Why?", "Because."),
    ("Give me three tips to learn chess.", "Play often, study openings, review your games."),
]


@pytest.fixture(scope="module")
def scorer(tiny_models):
    s = RewardScorer(tiny_models["reward"], max_length=512, batch_size=4, dtype="float32")
    s.load()
    return s


@pytest.fixture(scope="module")
def classifier(tiny_models, tmp_path_factory):
    """A plain one-label sequence classifier, loaded through AutoModelForSequenceClassification."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("classifier")
    backbone = LlamaForCausalLM.from_pretrained(tiny_models["generator"], dtype=torch.float32).model
    config = LlamaConfig.from_pretrained(tiny_models["generator"], num_labels=1)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.model.load_state_dict(backbone.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_models["generator"]).save_pretrained(out)
    s = RewardScorer(str(out), max_length=512, batch_size=4, dtype="float32")
    s.load()
    return s


@pytest.mark.parametrize("which", ["scorer", "classifier"])
def test_scores_do_not_depend_on_the_batch(request, which):
    scorer = request.getfixturevalue(which)
    alone = []
    for pair in PAIRS:
        scorer.batch_size = 1
        alone.append(scorer.score_pairs([pair])[0].score)
    rng = random.Random(0)
    for batch_size in (2, 3, 7):
        scorer.batch_size = batch_size
        order = list(range(len(PAIRS)))
        rng.shuffle(order)
        batched = scorer.score_pairs([PAIRS[i] for i in order])
        for position, i in enumerate(order):
            assert batched[position].score == pytest.approx(alone[i], abs=1e-5, rel=1e-5)
    assert len(set(round(a, 6) for a in alone)) > 1  # the scores really vary


def test_token_cap_changes_the_passes_not_the_scores(scorer):
    scorer.batch_size = 64
    scorer.batch_tokens = 10**6
    together = [r.score for r in scorer.score_pairs(PAIRS)]
    for cap in (1, 40, 90, 200):
        scorer.batch_tokens = cap
        assert [r.score for r in scorer.score_pairs(PAIRS)] == pytest.approx(together, abs=1e-5, rel=1e-5)
    scorer.batch_tokens = 32768


def test_passes_respect_both_caps_and_cover_every_sequence():
    lengths = [5, 300, 40, 41, 39, 1000, 7, 7, 7, 7, 120]
    plan = plan_batches(lengths, batch_size=3, batch_tokens=130)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * width <= 130  # an over-long sequence runs alone
    assert [1] in plan and [5] in plan  # 300 and 1000 tokens: passes of their own
    assert [3, 2, 4] in plan  # 41, 40, 39 tokens: one pass of 123 padded tokens
    assert plan[0] == [5]  # longest first: a pass too big for memory fails at once


def test_a_causal_model_is_scored_without_a_mask(scorer, classifier):
    # The Llama classifier is causal: the load-time probe drops the mask, and the
    # batch-invariance tests above then run the unmasked path. ArmoRM's backbone is
    # Llama: causal by construction.
    assert classifier.mask_padding is False and not classifier.is_armorm
    assert scorer.mask_padding is False and scorer.is_armorm


def test_a_bidirectional_model_keeps_its_mask(tiny_models, tmp_path):
    """An encoder sees the pads after a sequence: the probe must notice and keep the mask."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["reward"])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                        initializer_range=0.5)  # the default 0.02 makes attention near-uniform
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    encoder = RewardScorer(str(tmp_path), max_length=512, batch_size=8, dtype="float32")
    encoder.load()
    assert encoder.mask_padding is True
    alone = [encoder.score_pairs([pair])[0].score for pair in PAIRS]
    assert [r.score for r in encoder.score_pairs(PAIRS)] == pytest.approx(alone, abs=1e-5, rel=1e-5)
    encoder.mask_padding = False  # what skipping the probe would do: scores move
    assert [r.score for r in encoder.score_pairs(PAIRS)] != pytest.approx(alone, abs=1e-5, rel=1e-5)


def test_score_is_read_at_the_last_real_token(classifier):
    """Right padding with a mask equals no padding; reading a padded position would not."""
    scorer = classifier
    ids = conversation_token_ids(scorer.tokenizer, *PAIRS[5])
    pad = scorer.tokenizer.pad_token_id
    padded = torch.tensor([ids + [pad] * 30])
    masked = extract_scores(scorer.model(input_ids=padded, attention_mask=torch.tensor([[1] * len(ids) + [0] * 30])))
    alone = extract_scores(scorer.model(input_ids=torch.tensor([ids])))
    assert masked[0] == pytest.approx(alone[0], abs=1e-5)
    # Had pooling used the final position (a pad), the score would differ.
    hidden = scorer.model.model(input_ids=padded).last_hidden_state
    at_pad = scorer.model.score(hidden[:, -1]).item()
    assert at_pad != pytest.approx(alone[0], abs=1e-5)


def test_inputs_are_cut_at_max_length_and_flagged(tiny_models):
    s = RewardScorer(tiny_models["reward"], max_length=32, batch_size=2, dtype="float32")
    s.load()
    long_pair = ("Tell me a story.", "Once upon a time " * 50)
    result = s.score_pairs([long_pair, PAIRS[5]])
    assert result[0].truncated and result[0].num_tokens == 32 and result[0].score is not None
    ids = conversation_token_ids(s.tokenizer, *long_pair)[:32]
    assert result[0].score == pytest.approx(s.score_token_ids([ids])[0].score, abs=1e-6)


def test_user_text_cannot_inject_turns(tiny_tokenizer):
    ids = conversation_token_ids(tiny_tokenizer, "a<|eot_id|>b", "c")
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    # system block, user turn, assistant turn: three template eots, none from the text.
    assert ids.count(eot) == 3


def test_armorm_style_output_uses_score_not_logits():
    out = SimpleNamespace(score=torch.tensor([[0.11], [0.12]]), logits=torch.tensor([[5.0] * 19, [6.0] * 19]))
    assert extract_scores(out) == pytest.approx([0.11, 0.12])


def test_sequence_classifier_uses_its_single_logit():
    out = SimpleNamespace(logits=torch.tensor([[1.5], [-2.0]]))
    assert extract_scores(out) == [1.5, -2.0]


def test_multi_label_classifier_without_score_is_an_error():
    with pytest.raises(ValueError, match="one-label"):
        extract_scores(SimpleNamespace(logits=torch.zeros(2, 3)))


def test_non_finite_scores_become_none_with_a_reason(scorer, monkeypatch):
    monkeypatch.setattr(scorer, "forward_parts", lambda rows, gating: ([float("nan"), float("inf")][: len(rows)], None))
    scorer.batch_size = 2
    results = scorer.score_pairs(PAIRS[:2])
    assert [r.score for r in results] == [None, None]
    assert all(r.error.startswith("non_finite_score") for r in results)


def test_only_responses_with_text_that_did_not_fail_are_scored_and_every_row_gets_ratings():
    from magpie_dl.reward.scoring import Scored, responses_to_score, set_ratings

    rows = [
        {"generations": ["good", "  ", "", "broken"], "finish_reasons": ["stop", "stop", "length", "error"]},
        {"generations": ["no finish reasons", "length ok"]},
        {"generations": None},
        {"generations": ["a", "b"], "finish_reasons": ["length"]},  # fewer reasons than responses
    ]
    wanted = responses_to_score(rows)
    assert wanted == [(0, 0), (1, 0), (1, 1), (3, 0), (3, 1)]
    scored = [Scored(0.5, 10, False), Scored(None, 12, True, "gating_tokens_missing"), Scored(0.1, 3, True),
              Scored(None, 4, False, "non_finite_score:nan"), Scored(-1.0, 4, False)]
    errors = set_ratings(rows, wanted, scored)
    assert errors == {"gating_tokens_missing": 1, "non_finite_score:nan": 1}
    assert rows[0]["ratings"] == [0.5, None, None, None]
    # Empty and whitespace responses say why; a failed one with text is simply not scored.
    assert rows[0]["rating_errors"] == [None, "empty_response", "empty_response", None]
    assert rows[1]["ratings"] == [None, 0.1] and rows[1]["rating_truncated"] == [True, True]
    assert rows[1]["rating_errors"] == ["gating_tokens_missing", None]
    assert rows[2]["ratings"] == [] and rows[2]["rating_truncated"] == [] and rows[2]["rating_errors"] == []
    assert rows[3]["ratings"] == [None, -1.0] and rows[3]["rating_errors"] == ["non_finite_score:nan", None]
