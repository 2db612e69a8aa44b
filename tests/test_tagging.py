"""Judge prompts, schemas and the lenient-then-strict answer parser."""

from __future__ import annotations

import json

import pytest

from magpie_dl.curation.tagging import (
    CLASSIFICATION_SCHEMA,
    DIFFICULTY_SCHEMA,
    QUALITY_SCHEMA,
    TAG_TASKS,
    TASK_CATEGORIES,
    extract_json_object,
    parse_judge_output,
)


def test_prompts_render_instruction_and_expected_keys() -> None:
    for name, task in TAG_TASKS.items():
        prompt = task.render("Sort {this} list")  # braces in the instruction must survive
        assert "Sort {this} list" in prompt, name
        for key in task.schema["required"]:
            assert f'"{key}"' in prompt, (name, key)
    tags = TAG_TASKS["classification"].render("x")
    assert all(f"- {cat}:" in tags for cat in TASK_CATEGORIES)


def test_schemas_list_reasoning_before_verdict() -> None:
    assert list(DIFFICULTY_SCHEMA["properties"])[-1] == "difficulty"
    assert list(QUALITY_SCHEMA["properties"]) == ["explanation", "input_quality"]
    assert len(CLASSIFICATION_SCHEMA["properties"]["primary_tag"]["enum"]) == 12


def test_strict_json_maps_to_released_columns() -> None:
    text = json.dumps({"intent": "The user wants to sort", "knowledge": "lists", "difficulty": "easy"})
    assert TAG_TASKS["difficulty"].parse(text) == (
        {"intent": "The user wants to sort", "knowledge": "lists", "difficulty": "easy"},
        None,
    )
    value, error = TAG_TASKS["quality"].parse('{"explanation": "clear", "input_quality": "good"}')
    assert error is None and value == {"quality_explanation": "clear", "input_quality": "good"}


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"explanation": "ok", "input_quality": "good"}\n```',
        'Sure! Here is my rating:\n{"explanation": "ok", "input_quality": "good"}\nHope it helps.',
        '{"explanation": "line one\nline two\ttabbed", "input_quality": "good"}',  # raw controls
        '"explanation": "ok", "input_quality": "good"}',  # continues a prefilled "{"
        "{'explanation': 'ok', 'input_quality': 'good'}",  # python literal
        '{"Explanation": "ok", "Input_Quality": " Good "}',  # key and label case
        '{"explanation": "ok", "input_quality": "good"}{"explanation": "again"}',  # trailing junk
    ],
)
def test_lenient_extraction(text: str) -> None:
    value, error = TAG_TASKS["quality"].parse(text)
    assert error is None, error
    assert value is not None and value["input_quality"] == "good"
    assert value["quality_explanation"].startswith(("ok", "line one"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty output"),
        ("I cannot rate this.", "no JSON object found"),
        ('{"explanation": "the query is cle', "truncated"),
        ('{"explanation": "ok"}', "missing key 'input_quality'"),
        ('{"explanation": "ok", "input_quality": "superb"}', "not one of"),
        ('{"explanation": 3, "input_quality": "good"}', "expected a string"),
    ],
)
def test_failures_return_a_reason_not_an_exception(text: str, reason: str) -> None:
    value, error = TAG_TASKS["quality"].parse(text)
    assert value is None
    assert error is not None and reason in error


def test_category_spellings_are_canonicalised_and_other_tags_cleaned() -> None:
    text = json.dumps(
        {
            "primary_tag": "coding and debugging",
            "other_tags": ["Reasoning", "made-up tag", "Coding & Debugging", "math", "reasoning"],
        }
    )
    value, error = TAG_TASKS["classification"].parse(text)
    assert error is None
    # Unknown secondary tags dropped, primary removed from the others, duplicates folded.
    assert value == {"task_category": "Coding & Debugging", "other_task_category": ["Reasoning", "Math"]}


def test_other_tags_as_a_comma_string() -> None:
    value, _ = parse_judge_output('{"primary_tag": "Math", "other_tags": "Reasoning, Data analysis"}', CLASSIFICATION_SCHEMA)
    assert value == {"primary_tag": "Math", "other_tags": ["Reasoning", "Data analysis"]}


def test_invalid_primary_tag_fails() -> None:
    value, error = parse_judge_output('{"primary_tag": "Gardening", "other_tags": []}', CLASSIFICATION_SCHEMA)
    assert value is None and "primary_tag" in (error or "")


def test_extract_skips_non_object_json() -> None:
    assert extract_json_object("[1, 2]") == (None, "no JSON object found")
    assert extract_json_object('noise {"a": 1} more')[0] == {"a": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("safe", {"safety": "safe", "safety_categories": []}),
        ("\n\nunsafe\nS1,S10", {"safety": "unsafe", "safety_categories": ["S1", "S10"]}),
        ("Unsafe\nO3", {"safety": "unsafe", "safety_categories": ["O3"]}),
        ("unsafe", {"safety": "unsafe", "safety_categories": []}),
    ],
)
def test_guard_verdicts(text: str, expected: dict) -> None:
    from magpie_dl.curation.tagging import parse_guard_output

    assert parse_guard_output(text) == (expected, None)


@pytest.mark.parametrize("text", ["", "I think it is fine", "safely unsafe"])
def test_guard_garbage_is_a_reason(text: str) -> None:
    from magpie_dl.curation.tagging import parse_guard_output

    value, error = parse_guard_output(text)
    assert value is None and error


# --------------------------------------------------------------------------- answers into rows


def test_an_answer_fills_its_columns_and_a_failure_is_recorded_not_dropped():
    from magpie_dl.backends.base import Completion
    from magpie_dl.curation.tagging import parse_guard_output, record_answer, untagged_columns

    task = TAG_TASKS["quality"]
    row = {"instruction": "Sort a list", **untagged_columns([task], "judge")}
    assert row == {"instruction": "Sort a list", "quality_explanation": None, "input_quality": None,
                   "tagging_model": "judge", "tagging_errors": []}
    ok = Completion('{"explanation": "Clear.", "input_quality": "Good"}', finish_reason="stop")
    assert record_answer(row, task.name, task.parse, ok)
    assert row["input_quality"] == "good" and row["tagging_errors"] == []
    prose = Completion("It is fine.", finish_reason="length")
    assert not record_answer(row, task.name, task.parse, prose)
    [error] = row["tagging_errors"]
    assert error["task"] == "quality" and error["finish_reason"] == "length" and error["raw_output"] == "It is fine."
    failed = Completion("", finish_reason="error", error="engine died")
    assert not record_answer(row, "safety", parse_guard_output, failed)
    assert row["tagging_errors"][-1]["error"] == "backend error: engine died"
    assert not row.get("request_error")  # an engine error is not a request that failed


def test_a_judge_request_that_failed_after_its_retries_is_the_row_s_request_error():
    from magpie_dl.backends.base import error_completions
    from magpie_dl.curation.tagging import record_answer, untagged_columns

    task = TAG_TASKS["quality"]
    row = {"instruction": "Sort a list", "request_error": "", **untagged_columns([task], "judge")}
    [failed] = error_completions(1, "HTTP 500 from http://127.0.0.1:9/v1 (busy); gave up after 5 attempts",
                                 request_failed=True)
    assert not record_answer(row, task.name, task.parse, failed)
    assert row["request_error"] == "quality: HTTP 500 from http://127.0.0.1:9/v1 (busy); gave up after 5 attempts"
    assert row["tagging_errors"][-1]["task"] == "quality"


def test_guard_columns_keep_the_judge_errors_without_sharing_them():
    from magpie_dl.curation.tagging import unguarded_columns, untagged_columns

    earlier = [{"task": "difficulty", "error": "x", "finish_reason": "stop", "raw_output": ""}]
    columns = unguarded_columns("guard", earlier)
    assert columns == {"safety": None, "safety_categories": [], "safety_model": "guard", "tagging_errors": earlier}
    assert columns["tagging_errors"] is not earlier
    assert unguarded_columns("guard", None)["tagging_errors"] == []
    first, second = untagged_columns(TAG_TASKS.values(), "j"), untagged_columns(TAG_TASKS.values(), "j")
    assert first["tagging_errors"] is not second["tagging_errors"]  # each row its own list


def test_only_usable_instructions_are_tagged():
    from magpie_dl.curation.tagging import taggable

    assert taggable({"instruction": "Sort a list"}) and taggable({"instruction": "x", "instruction_status": "ok"})
    assert not taggable({"instruction": "Sort a list", "instruction_status": "truncated"})
    assert not taggable({"instruction": "  "}) and not taggable({"instruction": None})
