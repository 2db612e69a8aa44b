"""The query cleaner: what it strips, what it cuts, and what it marks unusable."""

from pathlib import Path

import pytest
import yaml

from magpie_dl.recipe.cleaning import CUT_RULES, CleaningRules, clean_query, is_fragment


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
    from magpie_dl.recipe.cleaning import duplicate_key

    assert duplicate_key("How do I  bake\nbread?") == duplicate_key("how do i bake bread?")
    assert duplicate_key("How do I bake bread?") != duplicate_key("How do I bake a bread?")
    assert len(duplicate_key("x" * 5000)) == 16  # a run remembers one key per query


# --- issue 13: cut only where an answer or a second turn demonstrably follows ---------

RAW_QUERIES = yaml.safe_load((Path(__file__).parent / "data" / "raw_queries.yaml").read_text(encoding="utf-8"))


def _short(text: str) -> str:
    return text[:48].replace("\n", "|")


@pytest.mark.parametrize(
    "raw",
    [
        "You are a travel assistant: help me plan a 5-day trip to Japan.",
        "Find the solution: x^2 - 5x + 6 = 0",
        "I tried these steps to fix my router:\n1. Restarted it\n2. Reset it\nWhat else can I try?",
    ],
)
def test_issue_cases_stay_whole(raw):
    # Main cut these to "You are a travel", "Find the" and the first line, and called them ok.
    result = clean_query(raw)
    assert (result.instruction, result.edits, result.reason) == (raw, (), None)


def test_data_file_holds_at_least_200_raw_queries():
    assert sum(len(section) for section in RAW_QUERIES.values()) >= 200
    assert len(RAW_QUERIES["whole"]) >= 150


@pytest.mark.parametrize("raw", RAW_QUERIES["whole"], ids=_short)
def test_real_queries_stay_whole(raw):
    result = clean_query(raw)
    assert result.instruction == raw
    assert result.edits == () and result.reason is None


@pytest.mark.parametrize("case", RAW_QUERIES["stripped"], ids=lambda c: _short(c["raw"]))
def test_decorations_are_stripped_without_a_cut(case):
    result = clean_query(case["raw"])
    assert result.instruction == case["instruction"]
    assert case["rule"] in result.actions
    assert not set(result.actions) & CUT_RULES and result.reason is None


@pytest.mark.parametrize("case", RAW_QUERIES["cut"], ids=lambda c: _short(c["raw"]))
def test_answers_and_second_turns_are_cut_and_recorded(case):
    result = clean_query(case["raw"])
    assert result.instruction == case["instruction"]
    assert result.reason is None
    cuts = [edit for edit in result.edits if edit.rule in CUT_RULES]
    assert [edit.rule for edit in cuts] == [case["rule"]]
    assert cuts[0].removed == case["removed"]
    assert case["raw"].rstrip().endswith(cuts[0].removed)  # the removed text is the raw tail


@pytest.mark.parametrize("case", RAW_QUERIES["fragment"], ids=lambda c: _short(c["raw"]))
def test_a_cut_leaving_a_fragment_marks_the_query_unusable(case):
    result = clean_query(case["raw"])
    assert result.reason == "fragment"
    assert case["rule"] in result.actions


def test_answer_markers_ending_in_a_colon_need_one_colon():
    # The reference's pattern added ":" after every marker, so "Answer:" needed "Answer::".
    assert clean_query("What is 3 + 4?\nAnswer: 7").instruction == "What is 3 + 4?"
    assert clean_query("What is 3 + 4?\nAnswer:: 7").instruction == "What is 3 + 4?"
    # Markers without their own colon still need one, as in the reference.
    assert clean_query("How do I relax?\nHere are some ideas.").edits == ()
    assert clean_query("How do I relax?\nHere are some: breathe slowly.").actions == ("cut_answer",)


def test_markers_the_user_quotes_are_not_cuts():
    for raw in (
        "Here is my attempt:\nAnswer: 42\nIs it right?",  # introduced by a colon
        "Check this:\nSolution: x = 2",
        "Is this right?\n```\nAnswer: 42\n```",  # inside code
        "I got this result.\nAnswer: 42",  # the user's own answer
        "What is 6 x 7?\nAnswer: 41\nWhy is that wrong?",  # the user asks about it afterwards
        "Find the Solution: x + 1 = 3",  # not after a sentence
    ):
        assert clean_query(raw).instruction == raw, raw


def test_first_question_rule_is_not_applied_to_ordinary_queries():
    # The reference keeps the text up to the first "?" (or the first line) of every query.
    for raw in ("What is a black hole? Could anything escape from one?",
                "Write a poem about the sea.\nMake it rhyme.",
                "Who wrote Hamlet? And when was it first performed?"):
        assert clean_query(raw).instruction == raw


def test_title_question_is_kept_only_when_an_answer_follows():
    answered = clean_query("**Why do cats purr?**\n\nCats purr when they are content or stressed.")
    assert answered.instruction == "Why do cats purr?"
    assert answered.actions == ("cut_title_answer", "strip_bold")
    for raw in ("**Why does my cat purr?**\nI adopted her last week and she purrs all the time.",
                '"Why did the chicken cross the road?"\nExplain why this joke is funny.',
                "**Can you help with my router?**\nIt drops every hour. What should I check?"):
        assert clean_query(raw).instruction == raw, raw


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("Find the", True), ("You are a travel", True), ("I tried these steps to fix my router:", True),
        ("Tell me about.", True), ("Why?", True), ("Explain recursion", True), ("The formula,", True),
        ("What is DNA?", False), ("What is this for?", False), ("Write a haiku about autumn.", False),
        ("如何提高我的中文写作水平？", False), ("Plan a trip to Japan for five days", False),
    ],
)
def test_fragments(text, fragment):
    assert is_fragment(text) is fragment


def test_every_edit_records_what_it_removed():
    raw = "  1. Question: What is 2+2?\nAnswer: 4  "
    result = clean_query(raw)
    assert result.instruction == "What is 2+2?"
    assert result.actions == ("strip_whitespace", "strip_enumerator", "strip_label", "cut_answer")
    assert result.removed == ("  " + "  ", "1. ", "Question: ", "Answer: 4")


def test_many_markers_stay_linear_time():
    # A check per candidate marker that rescans the text before it is quadratic (55K characters: ~18 s).
    import time

    for raw in ("Answer: x?\n" * 5000, "Why?\n" + "Solution: a\n" * 5000 + "ok?", "Q: a\n" * 10000,
                "Hi:\nAssistant: " * 5000):
        start = time.perf_counter()
        clean_query(raw)
        assert time.perf_counter() - start < 2.0  # ~0.05 s here; generous for a loaded machine


# --- issue 14: what real SmolLM2 text showed (tests/data/smollm2_raw_queries.yaml) ------


@pytest.mark.parametrize(
    "raw,expected",
    [
        # The model closed a quotation it never opened.
        ('I need ideas for my shop. How can I make it successful?"', "I need ideas for my shop. How can I make it successful?"),
        ("Can you help me sleep better?”", "Can you help me sleep better?"),
    ],
)
def test_a_stray_closing_quote_is_stripped(raw, expected):
    result = clean_query(raw)
    assert (result.instruction, result.actions, result.removed, result.reason) == (
        expected, ("strip_stray_quote",), (raw[-1],), None
    )


def test_an_answer_after_a_stray_closing_quote_is_cut():
    raw = 'How do I start a drone business?"\n\nMolley, the AI chatbot, is here to assist you.'
    result = clean_query(raw)
    assert result.instruction == "How do I start a drone business?"
    assert result.actions == ("cut_after_quote", "strip_stray_quote")
    assert result.removed == ("Molley, the AI chatbot, is here to assist you.", '"')
    assert result.reason is None


def test_quotes_that_pair_are_the_users():
    for raw in ('What does "carpe diem" mean?', 'He said "why?"\n\nI did not understand.',
                "Fix this:\n```\nprint(\"hi?\")\n```", 'Is “done?” a question?'):
        assert clean_query(raw).instruction == raw, raw


def test_an_opener_answering_the_question_before_it_is_cut_even_before_a_question():
    raw = "Can you help me with the most advanced data analysis? Absolutely, I can do it. What do you need from me?"
    result = clean_query(raw)
    assert result.instruction == "Can you help me with the most advanced data analysis?"
    assert result.actions == ("cut_opener",) and result.reason is None
    assert clean_query("Can I return it?\nSure! Here's how: go to Orders.").instruction == "Can I return it?"
    # An opener of the user's own, answering their own question, is not an assistant's.
    for raw in ("Can I cancel? Of course, I'd pay the fee. What is the process?",
                "Should I go? Absolutely, yes, if it is cheap. What do you think?"):
        assert clean_query(raw).instruction == raw, raw


@pytest.mark.parametrize(
    "raw,reason",
    [
        ("The internet has created a vast network of virtual ", "unfinished"),
        ("By far, I'm the most supportive and caring AI ", "unfinished"),
        ("How do I sort a list? ", None),  # ended after its question: a stray space only
        ("Plan a trip to Japan for five days", None),  # no end punctuation, but not cut off
        ("Write a haiku about autumn.\n", None),
    ],
)
def test_a_query_the_model_ended_on_a_space_mid_sentence_is_unfinished(raw, reason):
    assert clean_query(raw).reason == reason
