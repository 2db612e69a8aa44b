"""Cleaning raw Magpie queries.

A model asked to write a user query sometimes adds an enumerator ("1."), a label
("Question:"), answers itself ("Answer: ..."), or writes several questions. The
cleaner keeps the first query, records every edit it made, and marks queries that are
unusable with a reason instead of dropping them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Leading labels a model puts before the query. Case-insensitive, at the very start.
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:user(?:'s)? (?:query|question)|query|question|instruction|prompt|task|user|q)"
    r"\s*(?:\d+\s*)?(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_ENUMERATOR = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•]|\(\d{1,3}\))\s+")
# Where the model starts answering its own query. Note the reference's version of this
# pattern never matched "Answer:"; this one does (tested).
_ANSWER_MARKER = re.compile(
    r"(?:^|\n|\s)(?:\*\*)?(?:answer|response|solution|assistant)\s*(?:\*\*)?\s*[:：]",
    re.IGNORECASE,
)
# A following numbered query ("\n2. ...") means the model wrote a list of queries.
_NEXT_ITEM = re.compile(r"\n\s*(?:\d{1,3}[.)]|Question\s*\d*\s*[:：])\s+", re.IGNORECASE)


@dataclass(frozen=True)
class CleanResult:
    """The cleaned query, what was done to it, and why it is unusable (None if usable)."""

    instruction: str
    actions: tuple[str, ...] = field(default_factory=tuple)
    reason: str | None = None


@dataclass(frozen=True)
class CleaningRules:
    """Limits that decide when a query is unusable."""

    min_chars: int = 3
    max_chars: int = 8000
    # Fraction of characters that must be printable (guards against byte soup).
    min_printable: float = 0.9


def clean_query(raw: str | None, rules: CleaningRules = CleaningRules()) -> CleanResult:
    """Clean one raw query. Never raises for any string input."""
    if raw is None:
        return CleanResult("", (), "empty")
    actions: list[str] = []
    text = raw.replace("\r\n", "\n")

    stripped = text.strip()
    if stripped != text:
        actions.append("strip_whitespace")
    text = stripped

    for name, pattern in (("strip_label", _LABEL), ("strip_enumerator", _ENUMERATOR)):
        new = pattern.sub("", text, count=1)
        if new != text:
            actions.append(name)
            text = new.strip()

    marker = _ANSWER_MARKER.search(text)
    if marker and marker.start() > 0:
        actions.append("cut_answer")
        text = text[: marker.start()].rstrip()

    nxt = _NEXT_ITEM.search(text)
    if nxt:
        actions.append("keep_first_query")
        text = text[: nxt.start()].rstrip()

    if text.startswith('"') and text.endswith('"') and len(text) > 1 and text.count('"') == 2:
        actions.append("strip_quotes")
        text = text[1:-1].strip()

    return CleanResult(text, tuple(actions), unusable_reason(text, rules))


def unusable_reason(text: str, rules: CleaningRules = CleaningRules()) -> str | None:
    """Why a (cleaned) query cannot be used, or None."""
    if not text:
        return "empty"
    if len(text) < rules.min_chars:
        return "too_short"
    if len(text) > rules.max_chars:
        return "too_long"
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    if printable / len(text) < rules.min_printable:
        return "unprintable"
    if not any(ch.isalpha() for ch in text):
        return "no_letters"
    return None


def duplicate_key(instruction: str) -> bytes:
    """What two queries share when they are exact duplicates: case and spacing folded.

    A 16-byte digest of the folded text, not the text: a run remembers every query it
    wrote, and 1M queries of a few hundred characters would otherwise hold ~0.5 GB.
    """
    return hashlib.blake2b(" ".join(instruction.lower().split()).encode(), digest_size=16).digest()


def mark_exact_duplicates(rows: Iterable[dict[str, Any]], seen: set[bytes]) -> None:
    """Mark each usable query that repeats an earlier one ``instruction_status="duplicate"``.

    ``rows`` must come in row-index order; ``seen`` holds the keys of the rows before
    them (every status counts, so a row repeating an unusable one is a duplicate too)
    and is updated, so successive batches of one run share it.
    """
    for row in rows:
        key = duplicate_key(row.get("instruction") or "")  # None: a batch that failed upstream
        if row.get("instruction_status") == "ok" and key in seen:
            row["instruction_status"] = "duplicate"
        seen.add(key)
