"""Reviewers' answers to a verdict, and a verdict to a reviewed row: pure logic, no client.

See the table in :mod:`magpie_dl.review` for what each verdict does to a pair.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from magpie_dl.review import dataset as rd

@dataclass(frozen=True)
class Review:
    """One reviewer's submitted answers for one record."""

    preference: Optional[str]
    correction: Optional[str] = None
    note: Optional[str] = None


@dataclass(frozen=True)
class Verdict:
    """All submitted reviews of one record, aggregated.

    ``label`` is the strict-majority preference, ``"disputed"`` when no label has a strict majority,
    or None when nobody submitted. ``correction`` is set only when reviewers who wrote one agree
    on it; different corrections cancel out (``conflicting_corrections``).
    """

    label: Optional[str]
    reviews: int
    correction: Optional[str] = None
    notes: Tuple[str, ...] = ()
    conflicting_corrections: bool = False


DISPUTED = "disputed"

# review_action values
UNREVIEWED = "unreviewed"
CONFIRMED = "confirmed"
SWAPPED = "swapped"
CORRECTED = "corrected"
KEPT_TIE = "kept_tie"
DROPPED_TIE = "dropped_tie"
DROPPED_BOTH_BAD = "dropped_both_bad"
DROPPED_DISPUTED = "dropped_disputed"
DROPPED_UNREVIEWED = "dropped_unreviewed"


def aggregate_reviews(reviews: Sequence[Review]) -> Verdict:
    """Majority label, agreed correction and all notes of one record's submitted reviews."""
    votes = collections.Counter(review.preference for review in reviews if review.preference)
    label: Optional[str] = None
    if votes:
        (top, top_count), *rest = votes.most_common()
        # A strict majority of the votes cast, not just a plurality: 1-1 or 2-1-1 is a dispute.
        label = top if top_count * 2 > sum(votes.values()) else DISPUTED
    corrections = {review.correction.strip() for review in reviews if review.correction and review.correction.strip()}
    notes = tuple(review.note.strip() for review in reviews if review.note and review.note.strip())
    return Verdict(
        label=label,
        reviews=len(reviews),
        correction=next(iter(corrections)) if len(corrections) == 1 else None,
        notes=notes,
        conflicting_corrections=len(corrections) > 1,
    )



def apply_verdict(
    row: Mapping[str, Any], verdict: Optional[Verdict], ties: str = "drop", keep_unreviewed: bool = True
) -> Tuple[Optional[Dict[str, Any]], str]:
    """(reviewed row or None when dropped, review_action) for one DPO row; see the module table."""
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be 'drop' or 'keep', got {ties!r}")
    out = dict(row)
    label = verdict.label if verdict else None
    out["review_label"] = label
    out["review_note"] = "\n\n".join(verdict.notes) if verdict and verdict.notes else None
    out["review_count"] = verdict.reviews if verdict else 0

    def done(action: str, keep: bool) -> Tuple[Optional[Dict[str, Any]], str]:
        out["review_action"] = action
        return (out if keep else None), action

    if verdict is None or verdict.reviews == 0:
        return done(UNREVIEWED, True) if keep_unreviewed else done(DROPPED_UNREVIEWED, False)

    if verdict.correction:
        # The worse original stays as rejected: the original chosen only if reviewers said so.
        if label == rd.LABEL_REJECTED:
            out["rejected"] = row["chosen"]
            out["rejected_index"] = row.get("chosen_index")
            out["rejected_score"] = row.get("chosen_score")
        # The pair's prompt (a multi-turn pair's whole history) answered by the correction.
        prompt = list(row.get("chosen") or [])[:-1] or [{"role": "user", "content": row["instruction"]}]
        out["chosen"] = [*prompt, {"role": "assistant", "content": verdict.correction}]
        out["chosen_index"] = None
        out["chosen_score"] = None
        out["score_margin"] = None
        return done(CORRECTED, True)

    if label == rd.LABEL_CHOSEN:
        return done(CONFIRMED, True)
    if label == rd.LABEL_REJECTED:
        out["chosen"], out["rejected"] = row["rejected"], row["chosen"]
        out["chosen_index"], out["rejected_index"] = row.get("rejected_index"), row.get("chosen_index")
        out["chosen_score"], out["rejected_score"] = row.get("rejected_score"), row.get("chosen_score")
        if out["chosen_score"] is not None and out["rejected_score"] is not None:
            out["score_margin"] = out["chosen_score"] - out["rejected_score"]
        return done(SWAPPED, True)
    if label == rd.LABEL_TIE:
        return done(KEPT_TIE, True) if ties == "keep" else done(DROPPED_TIE, False)
    if label == rd.LABEL_BOTH_BAD:
        return done(DROPPED_BOTH_BAD, False)
    if label == DISPUTED:
        return done(DROPPED_DISPUTED, False)
    raise ValueError(f"unknown review label {label!r}")
