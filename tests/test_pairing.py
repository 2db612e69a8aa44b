"""Best/worst pairing: every edge case (ties, failures, truncation, NaN, margins)."""

import math

import pytest

from magpie_dl.recipe.pairing import (
    ALL_TIED,
    EMPTY,
    FAILED,
    FEWER_THAN_TWO,
    LOW_MARGIN,
    NO_SCORE,
    OK,
    TRUNCATED,
    PairingRules,
    pick_best_worst,
)

TEXTS = ["a", "b", "c", "d", "e"]
STOP = ["stop"] * 5


def test_chosen_is_highest_and_rejected_is_lowest():
    pair = pick_best_worst(TEXTS, [0.1, 0.5, -0.2, 0.3, 0.0], STOP)
    assert (pair.chosen_index, pair.rejected_index) == (1, 2)
    assert pair.kept and pair.margin == pytest.approx(0.7)


def test_ties_break_to_the_lowest_index():
    pair = pick_best_worst(TEXTS, [0.5, 0.5, 0.1, 0.1, 0.3], STOP)
    assert (pair.chosen_index, pair.rejected_index) == (0, 2)


def test_all_equal_scores_make_no_pair():
    pair = pick_best_worst(TEXTS, [0.25] * 5, STOP)
    assert not pair.kept and pair.reason == ALL_TIED


def test_truncated_response_is_never_chosen_even_with_the_best_score():
    pair = pick_best_worst(TEXTS, [0.1, 9.0, 0.2, 0.3, 0.0], ["stop", "length", "stop", "stop", "stop"])
    assert pair.chosen_index == 3 and pair.statuses[1] == TRUNCATED


def test_empty_response_is_never_chosen():
    pair = pick_best_worst(["", "b", "   ", "d", "e"], [9.0, 0.1, 8.0, 0.3, 0.2], STOP)
    assert pair.chosen_index == 3 and pair.rejected_index == 1
    assert pair.statuses[0] == EMPTY and pair.statuses[2] == EMPTY


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_non_finite_or_missing_scores_are_unusable(bad):
    pair = pick_best_worst(TEXTS, [0.1, bad, 0.3, 0.2, 0.0], STOP)
    assert pair.statuses[1] == NO_SCORE
    assert pair.chosen_index == 2 and pair.rejected_index == 4
    assert math.isfinite(pair.chosen_score) and math.isfinite(pair.rejected_score)


def test_failed_generation_is_unusable():
    pair = pick_best_worst(TEXTS, [0.1, 0.2, 0.3, 0.4, 0.5], ["stop", "stop", "stop", "stop", "error"])
    assert pair.statuses[4] == FAILED and pair.chosen_index == 3


def test_fewer_than_two_usable_responses_make_no_pair():
    pair = pick_best_worst(TEXTS, [0.1, 0.2, 0.3, 0.4, 0.5], ["length"] * 4 + ["stop"])
    assert pair.reason == FEWER_THAN_TWO
    assert pick_best_worst([], [], []).reason == FEWER_THAN_TWO


def test_margin_below_minimum_is_left_out():
    rules = PairingRules(min_margin=0.5)
    assert pick_best_worst(TEXTS, [0.1, 0.2, 0.3, 0.4, 0.5], STOP, rules).reason == LOW_MARGIN
    assert pick_best_worst(TEXTS, [0.0, 0.2, 0.3, 0.4, 0.5], STOP, rules).kept


def test_chosen_score_is_at_least_rejected_score_always():
    import random

    rng = random.Random(0)
    for _ in range(500):
        scores = [rng.choice([None, float("nan"), round(rng.uniform(-1, 1), 1)]) for _ in range(5)]
        finishes = [rng.choice(["stop", "stop", "length", "error"]) for _ in range(5)]
        texts = [rng.choice(["", "x", "y"]) for _ in range(5)]
        pair = pick_best_worst(texts, scores, finishes)
        if pair.kept:
            assert pair.chosen_score > pair.rejected_score
            assert pair.statuses[pair.chosen_index] == OK and pair.statuses[pair.rejected_index] == OK
            assert pair.chosen_index != pair.rejected_index


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="mismatched"):
        pick_best_worst(TEXTS, [0.1], STOP)


def test_negative_min_margin_is_rejected():
    with pytest.raises(ValueError, match="min_margin"):
        PairingRules(min_margin=-1)
