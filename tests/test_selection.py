"""Thresholds, duplicate removal, category-balanced seeded sampling, and the report."""

from __future__ import annotations

import random

import pytest

from magpie_dl.curation.selection import (
    QUOTA_REASON,
    SelectionConfig,
    REFERENCE_MIX,
    allocate_quotas,
    failed_checks,
    grouped_quotas,
    select_rows,
)


def _row(i: int, **tags: object) -> dict[str, object]:
    row: dict[str, object] = {
        "uuid": f"u{i:05d}",
        "difficulty": "medium",
        "input_quality": "good",
        "instruct_reward": 0.0,
        "min_similar_uuid": None,
        "task_category": "Math",
        "language": "EN",
    }
    row.update(tags)
    return row


def _pool() -> list[dict[str, object]]:
    """900 Information seeking, 300 Math, 60 Planning, all eligible."""
    cats = ["Information seeking"] * 900 + ["Math"] * 300 + ["Planning"] * 60
    return [_row(i, task_category=c) for i, c in enumerate(cats)]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, []),
        ({"difficulty": "easy"}, ["difficulty_below_min"]),
        ({"difficulty": "very hard"}, []),
        ({"difficulty": None}, ["difficulty_missing"]),
        ({"input_quality": "average"}, ["input_quality_below_min"]),
        ({"input_quality": "excellent"}, []),
        ({"instruct_reward": -5.0}, []),  # the bound is inclusive (>= -5)
        ({"instruct_reward": -5.01}, ["instruct_reward_below_min"]),
        ({"instruct_reward": float("nan")}, ["instruct_reward_missing"]),
        ({"min_similar_uuid": "u00003"}, []),  # represents itself: survivor
        ({"min_similar_uuid": "u00001"}, ["near_duplicate"]),
        ({"task_category": None}, ["task_category_missing"]),
        ({"instruction_status": "truncated", "difficulty": None}, ["instruction_unusable", "difficulty_missing"]),
        (
            {"difficulty": "easy", "input_quality": "poor", "min_similar_uuid": "u00001"},
            ["difficulty_below_min", "input_quality_below_min", "near_duplicate"],
        ),
    ],
)
def test_checks(tags: dict[str, object], expected: list[str]) -> None:
    assert failed_checks(_row(3, **tags), SelectionConfig()) == expected


def test_thresholds_are_configurable() -> None:
    cfg = SelectionConfig(min_difficulty="hard", min_input_quality=None, min_instruct_reward=None,
                          remove_duplicates=False, languages=("zh",))
    row = _row(1, input_quality="very poor", instruct_reward=-100.0, min_similar_uuid="u0")
    assert failed_checks(row, cfg) == ["difficulty_below_min", "language_not_allowed"]
    with pytest.raises(ValueError):
        SelectionConfig(min_difficulty="medium-ish")


def test_safety_check_is_opt_in() -> None:
    assert failed_checks(_row(1, safety="unsafe"), SelectionConfig()) == []
    strict = SelectionConfig(require_safe=True)
    assert failed_checks(_row(1, safety="unsafe"), strict) == ["unsafe"]
    assert failed_checks(_row(1), strict) == ["safety_missing"]
    assert failed_checks(_row(1, safety="safe"), strict) == []


def test_untagged_rows_can_form_their_own_stratum() -> None:
    rows = _pool()[:100] + [_row(2000 + i, task_category=None) for i in range(100)]
    reasons, report = select_rows(rows, SelectionConfig(target_size=50))
    assert report.selected_rows == 50 and report.dropped["task_category_missing"] == 100
    reasons, report = select_rows(rows, SelectionConfig(target_size=50, require_category=False, category_mix="uniform"))
    assert report.category_mix_after == {"(missing)": 25, "Information seeking": 25}


def test_quota_water_filling() -> None:
    available = {"A": 1000, "B": 1000, "C": 50}
    assert allocate_quotas(available, dict.fromkeys(available, 1.0), 600) == {"A": 275, "B": 275, "C": 50}
    # Odd totals: largest remainder, ties by name.
    assert allocate_quotas({"A": 10, "B": 10, "C": 10}, dict.fromkeys("ABC", 1.0), 7) == {"A": 3, "B": 2, "C": 2}
    # Weighted, and a category with weight 0 gets nothing.
    assert allocate_quotas(available, {"A": 3, "B": 1, "C": 0}, 400) == {"A": 300, "B": 100, "C": 0}
    # Target above supply: everything.
    assert allocate_quotas(available, dict.fromkeys(available, 1.0), 10**6) == available


def test_uniform_mix_balances_categories_and_reports() -> None:
    rows = _pool()
    rows[0]["difficulty"] = "easy"
    rows[1]["min_similar_uuid"] = rows[2]["uuid"]
    rows[2]["min_similar_uuid"] = rows[2]["uuid"]
    rows[3]["tagging_errors"] = [{"task": "quality", "error": "no JSON object found", "raw_output": "?"}]
    reasons, report = select_rows(rows, SelectionConfig(target_size=300, seed=7, category_mix="uniform"))
    selected = [r for r, why in zip(rows, reasons) if why is None]
    assert len(selected) == report.selected_rows == 300
    assert report.category_mix_after == {"Information seeking": 120, "Math": 120, "Planning": 60}
    assert report.category_mix_before == {"Information seeking": 900, "Math": 300, "Planning": 60}
    assert report.category_mix_eligible == {"Information seeking": 898, "Math": 300, "Planning": 60}
    assert report.dropped == {QUOTA_REASON: 958, "difficulty_below_min": 1, "near_duplicate": 1}
    assert sum(report.dropped.values()) + report.selected_rows == report.input_rows
    assert report.shortfall == 0
    assert report.tagging_failures == {"quality": 1}
    assert "Planning" in report.format()


def test_natural_mix_and_weights() -> None:
    rows = _pool()
    _, report = select_rows(rows, SelectionConfig(target_size=126, category_mix="natural"))
    assert report.category_mix_after == {"Information seeking": 90, "Math": 30, "Planning": 6}
    reasons, report = select_rows(rows, SelectionConfig(target_size=100, category_mix={"Math": 1.0, "Planning": 1.0}))
    assert report.category_mix_after == {"Math": 50, "Planning": 50}
    assert report.dropped["category_not_in_mix"] == 900


def test_shortfall_when_not_enough_rows() -> None:
    rows = _pool()[:50]
    _, report = select_rows(rows, SelectionConfig(target_size=80))
    assert report.selected_rows == 50 and report.shortfall == 30


def test_seeded_and_order_independent() -> None:
    rows = _pool()
    cfg = SelectionConfig(target_size=200, seed=3)

    def chosen(rs: list[dict[str, object]], c: SelectionConfig) -> set[object]:
        reasons, _ = select_rows(rs, c)
        return {r["uuid"] for r, why in zip(rs, reasons) if why is None}

    first = chosen(rows, cfg)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert chosen(shuffled, cfg) == first
    assert chosen(rows, cfg) == first
    assert chosen(rows, SelectionConfig(target_size=200, seed=4)) != first


def test_no_target_keeps_every_eligible_row() -> None:
    rows = _pool()
    rows[5]["input_quality"] = "poor"
    reasons, report = select_rows(rows, SelectionConfig())
    assert report.selected_rows == len(rows) - 1
    assert reasons[5] == "input_quality_below_min"


def _mixed_pool() -> list[dict[str, object]]:
    """What aligned models ask themselves: information and advice seeking dominate (70%)."""
    cats = (["Information seeking"] * 500 + ["Advice seeking"] * 200 + ["Math"] * 120 + ["Coding & Debugging"] * 100
            + ["Planning"] * 50 + ["Creative writing"] * 30)
    return [_row(i, task_category=c) for i, c in enumerate(cats)]


def test_default_mix_is_the_references_30_70_split() -> None:
    assert SelectionConfig().category_mix == "reference"
    rows = _mixed_pool()
    reasons, report = select_rows(rows, SelectionConfig(target_size=200, seed=1))
    after = report.category_mix_after
    assert report.selected_rows == 200
    # 30% from Information + Advice seeking, 70% from the rest, each part a random sample of its rows.
    assert after["Information seeking"] + after["Advice seeking"] == 60
    assert sum(n for c, n in after.items() if c not in ("Information seeking", "Advice seeking")) == 140
    assert after == {"Information seeking": 43, "Advice seeking": 17, "Math": 56, "Coding & Debugging": 47,
                     "Planning": 23, "Creative writing": 14}


def test_reference_mix_water_fills_a_short_part() -> None:
    available = {"Information seeking": 10, "Advice seeking": 5, "Math": 400, "Reasoning": 100}
    assert grouped_quotas(available, REFERENCE_MIX, 100) == {
        "Information seeking": 10, "Advice seeking": 5, "Math": 68, "Reasoning": 17}
    # Only info-seeking rows: they fill the whole target.
    assert grouped_quotas({"Information seeking": 500}, REFERENCE_MIX, 100) == {"Information seeking": 100}
    with pytest.raises(ValueError, match="category_mix"):
        SelectionConfig(category_mix="balanced")  # type: ignore[arg-type]
