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
    mean_minus_2sd,
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


# ------------------------------------------------------------------ the rejected policy (pairing.rejected)

MM2SD = PairingRules(rejected="mean_minus_2sd")
# 16 scores (N = 16, as a paper-sized sample): two low ones, the rest 0. mean - 2 sd is
# about -5.77, nearer -3 (index 1) than the minimum -10 (index 0).
SIXTEEN = [-10.0, -3.0] + [0.0] * 13 + [1.0]


def _pick(scores, rules, finishes=None, texts=None):
    n = len(scores)
    return pick_best_worst(texts or ["x"] * n, scores, finishes or ["stop"] * n, rules)


def test_mean_minus_2sd_rejects_the_score_nearest_the_target_where_min_rejects_the_lowest():
    assert mean_minus_2sd(SIXTEEN) == pytest.approx(-5.774937811, abs=1e-6)
    by_min, by_target = _pick(SIXTEEN, PairingRules()), _pick(SIXTEEN, MM2SD)
    assert (by_min.chosen_index, by_min.rejected_index) == (15, 0)
    assert (by_target.chosen_index, by_target.rejected_index) == (15, 1)
    assert by_target.margin == pytest.approx(4.0) and by_target.kept


def test_the_target_uses_the_population_sd():
    # Population sd of [1, 2, 3, 4] is sqrt(1.25); the sample sd would be sqrt(5/3).
    assert mean_minus_2sd([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2.5 - 2 * math.sqrt(1.25))


def test_a_tie_in_distance_goes_to_the_lower_score_then_the_lower_index():
    # mean -2, population sd 6 (exact in floats): the target is -14, and -8 and -20 are both 6 away.
    scores = [-8.0, -20.0] + [0.0] * 9 + [4.0]
    assert mean_minus_2sd(scores) == -14.0
    assert _pick(scores, MM2SD).rejected_index == 1  # the lower score, although at the higher index
    # Equal scores nearest the target: the lowest index (-3 at 1 and 2; the target moves, still nearest -3).
    assert _pick([-10.0, -3.0, -3.0] + [0.0] * 12 + [1.0], MM2SD).rejected_index == 1


@pytest.mark.parametrize("rules", [PairingRules(), MM2SD], ids=["min", "mean_minus_2sd"])
def test_ties_at_the_top_and_at_the_bottom(rules):
    pair = _pick([0.9, 0.1, 0.9, 0.1, 0.5], rules)
    assert (pair.chosen_index, pair.rejected_index) == (0, 1)
    # Top scores tied and the target above them all but one: the rejected is never a top one.
    pair = _pick([-10.0] + [1.0] * 15, rules)
    assert (pair.chosen_index, pair.rejected_index) == (1, 0)


def test_rejected_is_never_a_response_that_ties_the_chosen():
    # A far outlier pulls the target below the rest: the nearest score (0) ties the top one, so
    # the candidates are only those scored below the chosen: the outlier.
    pair = _pick([-1000.0] + [0.0] * 999, MM2SD)
    assert (pair.chosen_index, pair.rejected_index, pair.kept) == (1, 0, True)


@pytest.mark.parametrize("rules", [PairingRules(), MM2SD], ids=["min", "mean_minus_2sd"])
def test_all_equal_scores_make_no_pair_under_either_policy(rules):
    assert _pick([0.25] * 5, rules).reason == ALL_TIED
    assert _pick([0.25] * 16, rules).reason == ALL_TIED
    assert _pick([0.25, 0.25], rules).reason == ALL_TIED


def test_two_responses_the_target_is_below_both_so_the_lower_is_rejected():
    # Two values a < b: mean - 2 sd = (3a - b) / 2 < a.
    assert mean_minus_2sd([0.0, 1.0]) == -0.5
    assert (_pick([1.0, 0.0], MM2SD).chosen_index, _pick([1.0, 0.0], MM2SD).rejected_index) == (0, 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_unusable_responses_take_no_part_in_the_target(bad):
    # An unscored, non-finite, truncated or failed response is left out of the mean and sd: with
    # -100 counted the target would fall below -10 and the minimum would be rejected.
    scores = SIXTEEN + [bad, -100.0, -100.0]
    finishes = ["stop"] * 16 + ["stop", "length", "error"]
    pair = _pick(scores, MM2SD, finishes)
    assert pair.statuses[16:] == (NO_SCORE, TRUNCATED, FAILED)
    assert (pair.chosen_index, pair.rejected_index) == (15, 1)


def test_up_to_five_responses_both_policies_pick_the_same():
    # Samuelson's inequality: each of N scores lies within sqrt(N - 1) population sd of the mean,
    # so for N <= 5 mean - 2 sd is at or below the minimum.
    import random

    rng = random.Random(1)
    for _ in range(2000):
        n = rng.randint(2, 5)
        scores = [rng.choice([rng.gauss(0, 1), round(rng.uniform(-1, 1), 1), 0.0]) for _ in range(n)]
        a, b = _pick(scores, PairingRules()), _pick(scores, MM2SD)
        assert (a.chosen_index, a.rejected_index, a.reason) == (b.chosen_index, b.rejected_index, b.reason)
        assert mean_minus_2sd(scores) <= min(scores) + 1e-12


def test_the_minimum_margin_applies_to_the_policys_pair():
    # Under mean_minus_2sd the pair is 1 vs -3 (margin 4); min's would be 1 vs -10 (margin 11).
    assert _pick(SIXTEEN, PairingRules(min_margin=5.0, rejected="mean_minus_2sd")).reason == LOW_MARGIN
    assert _pick(SIXTEEN, PairingRules(min_margin=5.0)).kept


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown rejected policy 'median'; use one of: min, mean_minus_2sd"):
        PairingRules(rejected="median")


def test_the_policy_is_recorded_in_the_rows_response_configs_off_the_reference_only():
    from magpie_dl.recipe.pairing import pair_columns

    row = {"instruction": "q", "generations": ["x"] * 16, "ratings": SIXTEEN, "finish_reasons": ["stop"] * 16,
           "gen_response_configs": {"temperature": 0.8}}
    assert "gen_response_configs" not in pair_columns(row)  # the reference's rows stay as released
    columns = pair_columns(row, MM2SD)
    assert columns["gen_response_configs"] == {"temperature": 0.8, "pairing_rejected": "mean_minus_2sd"}
    assert columns["rejected_index"] == 1 and row["gen_response_configs"] == {"temperature": 0.8}


def test_the_step_takes_the_policy_from_the_pairing_section():
    from magpie_dl.config.sections import PairingConfig
    from magpie_dl.steps.pairing import BestWorstPairing

    step = BestWorstPairing.from_config(PairingConfig(rejected="mean_minus_2sd"), name="pairing")
    assert "gen_response_configs" in step.outputs
    step.load()
    rows = [{"instruction": "q", "generations": [f"r{i}" for i in range(16)], "ratings": SIXTEEN,
             "finish_reasons": ["stop"] * 16, "gen_response_configs": {"seed": 1}}]
    (out,) = next(step.process(rows))
    assert (out["chosen_index"], out["rejected_index"]) == (15, 1) and out["rejected"][1]["content"] == "r1"
    assert out["gen_response_configs"]["pairing_rejected"] == "mean_minus_2sd"
    assert BestWorstPairing.from_config(PairingConfig(), name="pairing").rejected_policy == "min"
