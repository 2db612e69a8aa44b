"""One vocabulary of statuses and reasons: every value a row can carry is defined once and described."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from magpie_dl.recipe import reasons
from magpie_dl.recipe.cleaning import CleaningRules, clean_query, mark_exact_duplicates, unusable_reason
from magpie_dl.recipe.pairing import PairingRules, pair_columns
from magpie_dl.curation.selection import CHECKS, QUOTA_REASON

ROOT = Path(__file__).resolve().parent.parent
STOP, LENGTH, ERROR = "stop", "length", "error"


def test_cleaning_statuses_are_described():
    rules = CleaningRules()
    texts = ["", "a", "x" * (rules.max_chars + 1), "\x00\x01\x02\x03 hello\x04\x05\x06\x07\x08", "1234 5678 90?"]
    found = {unusable_reason(text, rules) for text in texts}
    assert found == {reasons.EMPTY, reasons.TOO_SHORT, reasons.TOO_LONG, reasons.UNPRINTABLE, reasons.NO_LETTERS}
    assert found <= set(reasons.INSTRUCTION_STATUSES)
    assert clean_query(None).reason == reasons.EMPTY
    rows = [{"instruction": "Hi there, how are you?", "instruction_status": reasons.OK} for _ in range(2)]
    mark_exact_duplicates(rows, set())
    assert rows[1]["instruction_status"] == reasons.DUPLICATE


@pytest.mark.parametrize(
    ("finish", "status"), [(STOP, reasons.OK), (LENGTH, reasons.TRUNCATED), (ERROR, reasons.GENERATION_FAILED)]
)
def test_a_query_status_follows_its_finish_reason(finish, status):
    assert reasons.instruction_status_of(finish) == status
    assert status in reasons.INSTRUCTION_STATUSES


def _row(scores, finishes=None, texts=None, status=reasons.OK):
    n = len(scores)
    return {
        "instruction": "q",
        "instruction_status": status,
        "generations": texts or [f"answer {i}" for i in range(n)],
        "ratings": scores,
        "finish_reasons": finishes or [STOP] * n,
    }


@pytest.mark.parametrize(
    ("row", "pair_status", "response_statuses"),
    [
        (_row([0.1, 0.9]), reasons.KEPT, [reasons.OK, reasons.OK]),
        (_row([0.5, 0.5]), reasons.ALL_TIED, [reasons.OK, reasons.OK]),
        (_row([0.5, 0.5001]), reasons.KEPT, [reasons.OK, reasons.OK]),
        (_row([0.1, None, math.nan], [STOP, STOP, STOP]), reasons.FEWER_THAN_TWO,
         [reasons.OK, reasons.NO_SCORE, reasons.NO_SCORE]),
        (_row([0.1, 0.2, 0.3], [STOP, LENGTH, ERROR], ["a", "b", "c"]), reasons.FEWER_THAN_TWO,
         [reasons.OK, reasons.TRUNCATED, reasons.FAILED]),
        (_row([0.1, 0.2], texts=["a", " "]), reasons.FEWER_THAN_TWO, [reasons.OK, reasons.EMPTY]),
        (_row([], status=reasons.DUPLICATE), "instruction_duplicate", []),
    ],
)
def test_every_pair_and_response_status_is_described(row, pair_status, response_statuses):
    out = pair_columns(row, PairingRules())
    assert out["pair_status"] == pair_status and out["response_status"] == response_statuses
    assert pair_status in reasons.PAIR_STATUSES
    assert set(response_statuses) <= set(reasons.RESPONSE_STATUSES)
    assert (out["chosen"] is not None) == (pair_status == reasons.KEPT)


def test_low_margin_is_a_left_out_reason():
    out = pair_columns(_row([0.1, 0.2]), PairingRules(min_margin=0.5))
    assert out["pair_status"] == reasons.LOW_MARGIN in reasons.LEFT_OUT_REASONS


def test_every_instruction_status_has_its_left_out_reason():
    for status in reasons.INSTRUCTION_STATUSES:
        if status != reasons.OK:
            assert reasons.left_out_for_instruction(status) in reasons.LEFT_OUT_REASONS


def test_selection_reasons_are_described_in_check_order():
    assert list(CHECKS) == list(reasons.SELECTION_CHECKS)
    assert QUOTA_REASON in reasons.SELECTION_REASONS


def test_the_report_explains_reasons_from_the_one_vocabulary():
    from magpie_dl.release import report

    assert report.LEFT_OUT_REASONS is reasons.LEFT_OUT_REASONS
    assert report.RESPONSE_STATUSES is reasons.RESPONSE_STATUSES


def test_kept_is_defined_once():
    """No module but ``reasons`` binds a name to the literal ``"kept"``."""
    where = []
    for tree in ("magpie_dl", "steps", "pipelines"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value == "kept":
                    where.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert where == ["magpie_dl/recipe/reasons.py:" + str(_line_of("KEPT = "))]


def _line_of(prefix: str) -> int:
    lines = (ROOT / "magpie_dl" / "recipe" / "reasons.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(prefix))
