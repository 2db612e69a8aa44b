"""The rows the generation steps write, from completions alone (no model): query rows,
response columns and their provenance (magpie_dl.recipe.rows, magpie_dl.recipe.provenance)."""

from __future__ import annotations

from magpie_dl.backends.base import Completion, SamplingSpec
from magpie_dl.recipe.cleaning import CleaningRules
from magpie_dl.templates.families import get_family
from magpie_dl.recipe.rows import query_row, response_columns
from magpie_dl.recipe.queries import row_uuid
from magpie_dl.recipe.provenance import response_provenance

LLAMA = get_family("llama-3.1")
SPEC = SamplingSpec(n=1, temperature=0.9, top_p=0.95, max_tokens=64, seed=1234)


def _query_row(completion: Completion, **changes):
    settings = dict(
        generator="org/model", seed=7, index=3, category="math", system_prompt="Be brief.", spec=SPEC,
        family=LLAMA, stop_at_newline=False, rules=CleaningRules(),
    )
    return query_row(completion, **{**settings, **changes})


def test_a_query_row_keeps_the_raw_text_its_status_and_its_provenance():
    done = Completion("Question: How do tides work?", token_ids=[1, 2, 3, 4], finish_reason="stop")
    row = _query_row(done)
    assert row["uuid"] == row_uuid("org/model", 7, 3)
    assert row["instruction"] == "How do tides work?" and row["raw_instruction"] == done.text
    assert row["cleaning_actions"] and len(row["cleaning_actions"]) == len(row["cleaning_removed"])
    assert row["instruction_status"] == "ok" and row["system_prompt_category"] == "math"
    assert row["gen_input_configs"] == {
        "input_generator": "org/model", "temperature": 0.9, "top_p": 0.95, "max_tokens": 64, "seed": 1234,
        "pre_query_template": LLAMA.pre_query_prompt("Be brief."), "family": "llama-3.1",
        "family_source": LLAMA.source, "chat_template_date": LLAMA.template_date, "stop_at_newline": False,
        "finish_reason": "stop", "num_tokens": 4,
    }


def test_a_query_row_status_comes_from_a_failure_first_then_the_cleaner_then_the_finish_reason():
    assert _query_row(Completion("How do tides work?", finish_reason="length"))["instruction_status"] == "truncated"
    # A failure leaves no text: it is a failure, never an empty query.
    assert _query_row(Completion("", finish_reason="error"))["instruction_status"] == "generation_failed"
    assert _query_row(Completion("How do tides work?", finish_reason="error"))["instruction_status"] == "generation_failed"
    short = _query_row(Completion("Why?", finish_reason="length"), rules=CleaningRules(min_chars=10))
    assert short["instruction_status"] == "too_short"


def test_a_query_whose_request_failed_is_request_failed_with_the_error_and_never_empty():
    error = "HTTP 500 from http://10.0.0.1:8000 (boom); gave up after 5 attempts"
    row = _query_row(Completion("", [], "error", error, request_failed=True))
    assert row["instruction_status"] == "request_failed" and row["request_error"] == error
    assert row["gen_input_configs"]["finish_reason"] == "error"
    assert _query_row(Completion("How do tides work?", finish_reason="stop"))["request_error"] == ""


def test_responses_whose_request_failed_carry_its_error():
    error = "ReadTimeout from http://10.0.0.1:8000; gave up after 5 attempts"
    columns = response_columns([Completion("", [], "error", error, request_failed=True)] * 2, thinking=False)
    assert columns["finish_reasons"] == ["error", "error"] and columns["request_error"] == error
    refused = response_columns([Completion("", [], "error", "HTTP 400: too long")], thinking=False)
    assert refused["request_error"] == ""  # refused by the server: the engine's failure, not a failed request


def test_responses_are_stripped_and_counted():
    done = [Completion("  An answer.\n", [1, 2], "stop"), Completion(" \n", [3], "length")]
    assert response_columns(done, thinking=False) == {
        "generations": ["An answer.", ""], "finish_reasons": ["stop", "length"], "generation_tokens": [2, 1],
        "request_error": "",
    }
    assert response_columns([], thinking=False) == {
        "generations": [], "finish_reasons": [], "generation_tokens": [], "request_error": "",
    }


def test_with_thinking_the_think_block_goes_to_reasoning_and_is_never_a_generation():
    done = [Completion("<think>\nsum the digits\n</think>\n\n 42 ", [1], "stop"),
            Completion("plain answer", [1], "stop"),
            Completion("<think>ran out", [1], "length")]
    columns = response_columns(done, thinking=True)
    assert list(columns) == ["reasoning", "generations", "finish_reasons", "generation_tokens", "request_error"]
    assert columns["reasoning"] == ["sum the digits", None, "ran out"]
    assert columns["generations"] == ["42", "plain answer", ""]


def test_response_provenance_records_the_template_date_only_for_the_chat_template():
    settings = dict(
        prompt="P", temperature=0.8, top_p=1.0, repetition_penalty=1.0, max_tokens=4096, stop_tokens=["<|eot_id|>"],
        generator="org/model", engine="vllm", seed=5, thinking=False, chat_template_date="26 Jul 2024",
    )
    magpie = response_provenance(prompt_style="magpie", **settings)
    assert magpie == {
        "prompt": "P", "temperature": 0.8, "top_p": 1.0, "repetition_penalty": 1.0, "max_tokens": 4096,
        "stop_tokens": ["<|eot_id|>"], "output_generator": "org/model", "engine": "vllm", "seed": 5,
        "prompt_style": "magpie", "thinking": False, "chat_template_date": None,
    }
    assert response_provenance(prompt_style="chat_template", **settings)["chat_template_date"] == "26 Jul 2024"
    assert response_provenance(prompt_style="magpie", **{**settings, "seed": None})["seed"] is None
