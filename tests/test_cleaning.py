"""The query cleaner: what it strips, what it cuts, and what it marks unusable."""

import pytest

from magpie_dl.cleaning import CleaningRules, clean_query


@pytest.mark.parametrize(
    "raw,expected,action",
    [
        ("  How do I sort a list?  ", "How do I sort a list?", "strip_whitespace"),
        ("Question: How do I sort a list?", "How do I sort a list?", "strip_label"),
        ("**Query:** What is DNA?", "What is DNA?", "strip_label"),
        ("1. How do I bake bread?", "How do I bake bread?", "strip_enumerator"),
        ("How do I bake bread?\nAnswer: Mix flour and water.", "How do I bake bread?", "cut_answer"),
        ("What is 2+2? Answer: 4", "What is 2+2?", "cut_answer"),
        ("How do I bake bread?\n2. How do I make pasta?", "How do I bake bread?", "keep_first_query"),
        ('"Explain photosynthesis."', "Explain photosynthesis.", "strip_quotes"),
    ],
)
def test_cleaner_edits_and_records_what_it_did(raw, expected, action):
    result = clean_query(raw)
    assert result.instruction == expected
    assert action in result.actions
    assert result.reason is None


def test_answer_marker_is_matched_unlike_the_reference():
    # The reference's regex never matched "Answer:"; ours must cut there.
    assert clean_query("Why is the sky blue? Answer: Rayleigh scattering.").instruction == "Why is the sky blue?"


def test_clean_query_is_left_alone():
    result = clean_query("Write a haiku about autumn leaves.")
    assert result.instruction == "Write a haiku about autumn leaves."
    assert result.actions == ()


def test_multiline_query_without_markers_is_kept_whole():
    text = "I have this code:\nprint(1)\nWhy does it print 1?"
    assert clean_query(text).instruction == text


@pytest.mark.parametrize(
    "raw,reason",
    [
        (None, "empty"),
        ("", "empty"),
        ("   \n ", "empty"),
        ("Hi", "too_short"),
        ("12345 678", "no_letters"),
        ("\x00\x01\x02\x03\x04\x05\x06\x07abc", "unprintable"),
        ("Answer: 42", None),
    ],
)
def test_unusable_queries_are_marked_with_a_reason(raw, reason):
    assert clean_query(raw).reason == reason


def test_enormous_query_is_marked_too_long():
    result = clean_query("word " * 5000, CleaningRules(max_chars=8000))
    assert result.reason == "too_long"


def test_duplicate_keys_fold_case_and_spacing_and_stay_small():
    from magpie_dl.cleaning import duplicate_key

    assert duplicate_key("How do I  bake\nbread?") == duplicate_key("how do i bake bread?")
    assert duplicate_key("How do I bake bread?") != duplicate_key("How do I bake a bread?")
    assert len(duplicate_key("x" * 5000)) == 16  # a run remembers one key per query
