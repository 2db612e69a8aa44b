"""Every status and reason a row can carry, with what it means: one vocabulary for the whole recipe.

Rows are marked, never silently dropped; the mark is one of the values below. Steps set
them, the export counts them, and the card and the report explain them with the one-line
descriptions here. Pure data.

Columns and their values:

- ``instruction_status``: :data:`OK` or why the query is unusable (:data:`INSTRUCTION_STATUSES`;
  the query cleaner, the generator and the exact-duplicate pass set it).
- ``response_status[i]``: whether response ``i`` can take part in a pair (:data:`RESPONSE_STATUSES`).
- ``pair_status``: :data:`KEPT` or why the row has no pair (:data:`LEFT_OUT_REASONS`: an
  unusable instruction's status prefixed ``instruction_``, or a pairing reason).
- ``rating_errors[i]``: why response ``i`` has no score (:data:`RATING_ERRORS`).
- ``request_error``: ``""``, or why the row's last request to a server failed after all its
  retries (endpoint and last error, credentials scrubbed); such a row's query or responses
  are :data:`REQUEST_FAILED`, never empty, and a rerun sends the request again.
- ``selection_reason``: None for a selected row, else the first failed curation check
  (:data:`SELECTION_REASONS`).
- ``finish_reasons[i]``: the engine's ``stop`` / ``length`` / ``error`` (:data:`FINISH_REASONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from magpie_dl.recipe.conversation import MAX_TURNS

# --------------------------------------------------------------------------- shared values

OK = "ok"  # a usable instruction, a usable response
KEPT = "kept"  # a row whose pair is in the dataset

# --------------------------------------------------------------------------- finish reasons

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ERROR = "error"
FINISH_REASONS: dict[str, str] = {
    FINISH_STOP: "the text ended on its own (end-of-turn token or stop string)",
    FINISH_LENGTH: "the text hit max_tokens before it ended",
    FINISH_ERROR: "the engine failed to produce the text",
}

# --------------------------------------------------------------------------- instructions

EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
UNPRINTABLE = "unprintable"
NO_LETTERS = "no_letters"
FRAGMENT = "fragment"
UNFINISHED = "unfinished"
TRUNCATED = "truncated"
GENERATION_FAILED = "generation_failed"
# The request got no usable answer after its retries (a server or the path to it failed,
# not the model): counted apart everywhere, fails the run unless allowed, retried by a rerun.
REQUEST_FAILED = "request_failed"
REQUEST_FAILED_TEXT = "the request to the server failed after all its retries (request_error says why); a rerun retries it"
DUPLICATE = "duplicate"

# Why a query is unusable; OK is the one usable value.
INSTRUCTION_STATUSES: dict[str, str] = {
    OK: "usable",
    EMPTY: "the cleaned query was empty",
    TOO_SHORT: "the cleaned query was shorter than the cleaner's minimum",
    TOO_LONG: "the cleaned query was longer than the cleaner's maximum",
    UNPRINTABLE: "too many unprintable characters in the query",
    NO_LETTERS: "the query has no letters",
    FRAGMENT: "cutting the model's own answer off the query left a piece of a sentence",
    UNFINISHED: "the model ended its turn in the middle of a sentence",
    TRUNCATED: "the query hit max_tokens before it ended",
    GENERATION_FAILED: "the engine failed to produce the query",
    REQUEST_FAILED: REQUEST_FAILED_TEXT,
    DUPLICATE: "an exact copy (ignoring case and spacing) of an earlier query",
}


# A multi-turn row is as usable as its worst turn: a later turn's query or an earlier reply
# that cannot be used leaves the whole conversation out, its status naming the turn
# (``turn_2_fragment``, ``turn_1_reply_truncated``). A failed request stays ``request_failed``:
# a rerun retries it, whichever turn it was.
REPLY_STATUSES: dict[str, str] = {
    EMPTY: "empty text",
    TRUNCATED: "hit the reply's max_tokens before it ended",
    GENERATION_FAILED: "the engine failed to produce it",
}


def later_turn_status(turn: int, status: str) -> str:
    """The ``instruction_status`` of a conversation whose user turn ``turn`` (>= 2) is unusable."""
    return status if status == REQUEST_FAILED else f"turn_{turn}_{status}"


def reply_status(turn: int, status: str) -> str:
    """The ``instruction_status`` of a conversation whose reply to turn ``turn`` is unusable."""
    return status if status == REQUEST_FAILED else f"turn_{turn}_reply_{status}"


INSTRUCTION_STATUSES.update({
    **{
        later_turn_status(t, s): f"user turn {t}: {text}"
        for t in range(2, MAX_TURNS + 1) for s, text in list(INSTRUCTION_STATUSES.items()) if s not in (OK, REQUEST_FAILED)
    },
    **{reply_status(t, s): f"the reply to user turn {t}: {text}" for t in range(1, MAX_TURNS) for s, text in REPLY_STATUSES.items()},
})


def instruction_status_of(finish_reason: str, request_failed: bool = False) -> str:
    """A query's status from its finish reason: one that hit max_tokens or failed is not a
    finished query; a failure is the request's when it failed after its retries."""
    if request_failed:
        return REQUEST_FAILED
    return {FINISH_STOP: OK, FINISH_LENGTH: TRUNCATED}.get(finish_reason, GENERATION_FAILED)


def is_usable(row: Mapping[str, Any]) -> bool:
    """Whether a row's instruction is usable (rows without a status are: they came from elsewhere)."""
    return row.get("instruction_status", OK) == OK


# --------------------------------------------------------------------------- responses

FAILED = "failed"
NO_SCORE = "no_score"
RESPONSE_STATUSES: dict[str, str] = {
    OK: "usable: non-empty, finished on its own, scored",
    EMPTY: "empty text",
    TRUNCATED: "hit max_tokens (never chosen)",
    FAILED: "the engine reported a failure",
    REQUEST_FAILED: REQUEST_FAILED_TEXT,
    NO_SCORE: "the reward model gave no finite score",
}

# Why a response has no score (``rating_errors[i]``); ``non_finite_score:<value>`` carries the value.
EMPTY_RESPONSE = "empty_response"
NON_FINITE_SCORE = "non_finite_score"
GATING_TOKENS_MISSING = "gating_tokens_missing"
RATING_ERRORS: dict[str, str] = {
    EMPTY_RESPONSE: "the response was empty or failed, so it was not scored",
    NON_FINITE_SCORE: "the reward model returned NaN or infinity (the value follows the colon)",
    GATING_TOKENS_MISSING: "the cut at reward.max_length removed the assistant header ArmoRM gates on",
    REQUEST_FAILED: "the response's request failed after all its retries, so there was nothing to score",
}


def non_finite_score(value: float) -> str:
    """The rating error of a score that is not a finite number."""
    return f"{NON_FINITE_SCORE}:{value}"


# --------------------------------------------------------------------------- pairs

FEWER_THAN_TWO = "fewer_than_two_usable"
ALL_TIED = "all_scores_tied"
LOW_MARGIN = "margin_below_min"
PAIRING_REASONS: dict[str, str] = {
    FEWER_THAN_TWO: "fewer than two responses were usable (non-empty, finished, scored)",
    ALL_TIED: "every usable response got the same score, so there is no preference",
    LOW_MARGIN: "chosen - rejected score was below pairing.min_margin",
    REQUEST_FAILED: "the responses' request failed after all its retries (request_error says why)",
}
INSTRUCTION_PREFIX = "instruction_"


def left_out_for_instruction(status: str) -> str:
    """The ``pair_status`` of a row whose instruction is unusable (``instruction_<status>``)."""
    return f"{INSTRUCTION_PREFIX}{status}"


def pair_status(instruction_status: str, pairing_reason: str | None) -> str:
    """A row's ``pair_status``: an unusable instruction wins, then the pairing's reason, else :data:`KEPT`."""
    if instruction_status != OK:
        return left_out_for_instruction(instruction_status)
    return pairing_reason or KEPT


# Why a row has no pair, in words: every value ``pair_status`` takes besides KEPT.
LEFT_OUT_REASONS: dict[str, str] = {
    **{left_out_for_instruction(s): text for s, text in INSTRUCTION_STATUSES.items() if s != OK},
    **PAIRING_REASONS,
}
PAIR_STATUSES: dict[str, str] = {KEPT: "the row's pair is in the dataset", **LEFT_OUT_REASONS}
UNDESCRIBED = "not described by this tool; see the pipeline step that set it"

# --------------------------------------------------------------------------- curation (selection)

INSTRUCTION_UNUSABLE = "instruction_unusable"
NEAR_DUPLICATE = "near_duplicate"
CATEGORY_QUOTA = "category_quota"
# Checks in the order a row's drop reason is chosen (the first failed one is the reason).
SELECTION_CHECKS: dict[str, str] = {
    INSTRUCTION_UNUSABLE: "the generator marked the query unusable (instruction_status is not ok)",
    "difficulty_missing": "no judged difficulty",
    "difficulty_below_min": "judged difficulty below selection.min_difficulty",
    "input_quality_missing": "no judged input quality",
    "input_quality_below_min": "judged input quality below selection.min_input_quality",
    "instruct_reward_missing": "no finite instruct reward",
    "instruct_reward_below_min": "instruct reward below selection.min_instruct_reward",
    "language_not_allowed": "detected language not in selection.languages",
    "safety_missing": "no safety verdict",
    "unsafe": "the safety judge said unsafe",
    NEAR_DUPLICATE: "a near duplicate of an earlier query (min_similar_uuid is another row)",
    "task_category_missing": "no task category",
    "category_not_in_mix": "the task category has no share in selection.category_mix",
}
SELECTION_REASONS: dict[str, str] = {
    **SELECTION_CHECKS,
    CATEGORY_QUOTA: "eligible, but its task category's quota was already full",
}
