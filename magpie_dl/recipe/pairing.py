"""Best/worst pairing: chosen = highest reward, rejected = lowest, with explicit edge cases.

A response is *usable* when its text is non-empty, it ended on its own (finish reason
``stop``: a truncated answer is never chosen) and its score is a finite number. Among
usable responses the highest score is chosen and the lowest rejected; ties go to the
lowest index, so the result is deterministic. A row yields no pair, with a reason,
when fewer than two responses are usable, when all usable scores tie, or when the
margin is below the configured minimum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from magpie_dl.recipe.conversation import with_message

# Per-response statuses and per-row reasons for leaving a row out (the vocabulary lives in reasons).
from magpie_dl.recipe.reasons import (
    ALL_TIED,
    EMPTY,
    FAILED,
    FEWER_THAN_TWO,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    KEPT,
    LOW_MARGIN,
    NO_SCORE,
    OK,
    REQUEST_FAILED,
    TRUNCATED,
    pair_status,
)


@dataclass(frozen=True)
class PairingRules:
    """Attributes:
    min_margin: pairs whose chosen - rejected score is below this are left out.
    """

    min_margin: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_margin) or self.min_margin < 0:
            raise ValueError(f"min_margin must be a finite number >= 0, got {self.min_margin}")


@dataclass(frozen=True)
class Pair:
    """The outcome for one instruction."""

    statuses: tuple[str, ...]
    chosen_index: int | None = None
    rejected_index: int | None = None
    chosen_score: float | None = None
    rejected_score: float | None = None
    reason: str | None = field(default=None)

    @property
    def kept(self) -> bool:
        return self.reason is None

    @property
    def margin(self) -> float | None:
        if self.chosen_score is None or self.rejected_score is None:
            return None
        return self.chosen_score - self.rejected_score


def response_status(text: str | None, finish_reason: str | None, score: float | None) -> str:
    """Why a response can or cannot take part in a pair."""
    if finish_reason not in (None, FINISH_STOP, FINISH_LENGTH):
        return FAILED
    if text is None or not text.strip():
        return EMPTY
    if finish_reason == FINISH_LENGTH:
        return TRUNCATED
    if score is None or not math.isfinite(score):
        return NO_SCORE
    return OK


def pick_best_worst(
    texts: Sequence[str | None],
    scores: Sequence[float | None],
    finish_reasons: Sequence[str | None],
    rules: PairingRules = PairingRules(),
) -> Pair:
    """Choose the best and worst usable responses of one instruction."""
    if not (len(texts) == len(scores) == len(finish_reasons)):
        raise ValueError(
            f"mismatched lengths: {len(texts)} texts, {len(scores)} scores, {len(finish_reasons)} finish reasons"
        )
    statuses = tuple(response_status(t, f, s) for t, s, f in zip(texts, scores, finish_reasons))
    usable = [i for i, status in enumerate(statuses) if status == OK]
    if len(usable) < 2:
        return Pair(statuses, reason=FEWER_THAN_TWO)
    best = max(usable, key=lambda i: (scores[i], -i))  # highest score, lowest index on ties
    worst = min(usable, key=lambda i: (scores[i], i))  # lowest score, lowest index on ties
    pair = Pair(statuses, best, worst, float(scores[best]), float(scores[worst]))  # type: ignore[arg-type]
    if pair.chosen_score == pair.rejected_score:
        return Pair(statuses, best, worst, pair.chosen_score, pair.rejected_score, reason=ALL_TIED)
    if pair.margin < rules.min_margin:  # type: ignore[operator]
        return Pair(statuses, best, worst, pair.chosen_score, pair.rejected_score, reason=LOW_MARGIN)
    return pair


def pair_columns(row: Mapping[str, Any], rules: PairingRules = PairingRules()) -> dict[str, Any]:
    """The pairing columns of one scored row (see ``BestWorstPairing``); the row's pair is ``None`` unless kept."""
    # Without finish reasons (a stock TextGeneration gives none) each is unknown, not truncated.
    finish_reasons = row.get("finish_reasons") or [None] * len(row["generations"])
    pair = pick_best_worst(row["generations"], row["ratings"], finish_reasons, rules)
    if row.get("request_error") and FINISH_ERROR in finish_reasons:
        # The responses' one request failed after its retries: no pair, for that reason.
        statuses = [REQUEST_FAILED if f == FINISH_ERROR else s for s, f in zip(pair.statuses, finish_reasons)]
        pair = Pair(tuple(statuses), reason=REQUEST_FAILED)
    status = pair_status(row.get("instruction_status", OK), pair.reason)
    kept = status == KEPT
    return {
        "pair_status": status,
        "response_status": list(pair.statuses),
        "chosen_index": pair.chosen_index if kept else None,
        "rejected_index": pair.rejected_index if kept else None,
        "chosen_score": pair.chosen_score if kept else None,
        "rejected_score": pair.rejected_score if kept else None,
        "score_margin": pair.margin if kept else None,
        "chosen": with_message(row, "assistant", row["generations"][pair.chosen_index]) if kept else None,
        "rejected": with_message(row, "assistant", row["generations"][pair.rejected_index]) if kept else None,
    }
