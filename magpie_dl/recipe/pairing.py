"""Pairing: chosen = highest reward, rejected by a policy (the lowest by default), edge cases explicit.

A response is *usable* when its text is non-empty, it ended on its own (finish reason
``stop``: a truncated answer is never chosen) and its score is a finite number. Among
usable responses the highest score is chosen; the rejected one is picked among the usable
responses scored below it, by the rules' policy (:data:`REJECTED_POLICIES`). Ties go to the
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


# How the rejected response is picked; the first is the released recipe's (the reference).
MIN = "min"
MEAN_MINUS_2SD = "mean_minus_2sd"
REJECTED_POLICIES: dict[str, str] = {
    MIN: "the lowest-scored usable response",
    MEAN_MINUS_2SD: "the usable response scored closest to mean - 2 sd of the row's usable scores "
    "(population sd; arXiv 2502.16825)",
}


@dataclass(frozen=True)
class PairingRules:
    """Attributes:
    min_margin: pairs whose chosen - rejected score is below this are left out.
    rejected: how the rejected response is picked (a key of :data:`REJECTED_POLICIES`).
    """

    min_margin: float = 0.0
    rejected: str = MIN

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_margin) or self.min_margin < 0:
            raise ValueError(f"min_margin must be a finite number >= 0, got {self.min_margin}")
        if self.rejected not in REJECTED_POLICIES:
            raise ValueError(f"unknown rejected policy {self.rejected!r}; use one of: {', '.join(REJECTED_POLICIES)}")


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


def mean_minus_2sd(scores: Sequence[float]) -> float:
    """``mean - 2 * sd`` of ``scores``, with the population sd (divide by N, numpy's default): the
    row's N rewards are the whole distribution the target is placed in, not a sample of a larger one."""
    mean = math.fsum(scores) / len(scores)
    sd = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / len(scores))
    return mean - 2.0 * sd


def pick_rejected(scores: Sequence[float | None], usable: Sequence[int], chosen: int, policy: str) -> int | None:
    """The rejected response's index among ``usable`` (indices of finite scores), or None when
    every usable score equals the chosen one's (all tied).

    Candidates are the usable responses scored below ``chosen``, so a pair always has a
    positive margin. ``min``: the lowest score, lowest index on ties. ``mean_minus_2sd``:
    the score closest to :func:`mean_minus_2sd` of all usable scores (chosen's included);
    ties in distance go to the lower score (the larger margin), then the lowest index.

    With N usable scores every one lies within ``sqrt(N - 1)`` population sd of the mean
    (Samuelson's inequality), so for N <= 5 the target is at or below the minimum and both
    policies pick the same response, always. On normally distributed scores they part in no
    row of 20,000 at N = 8, about 4% of rows at N = 16, a third at N = 32, three quarters at N = 64.
    """
    below = [i for i in usable if scores[i] < scores[chosen]]  # type: ignore[operator]
    if not below:
        return None
    if policy == MIN:
        return min(below, key=lambda i: (scores[i], i))
    target = mean_minus_2sd([float(scores[i]) for i in usable])  # type: ignore[arg-type]
    return min(below, key=lambda i: (abs(scores[i] - target), scores[i], i))  # type: ignore[operator]


def pick_best_worst(
    texts: Sequence[str | None],
    scores: Sequence[float | None],
    finish_reasons: Sequence[str | None],
    rules: PairingRules = PairingRules(),
) -> Pair:
    """Choose the chosen (best) and the rejected (by ``rules.rejected``) usable responses of one instruction."""
    if not (len(texts) == len(scores) == len(finish_reasons)):
        raise ValueError(
            f"mismatched lengths: {len(texts)} texts, {len(scores)} scores, {len(finish_reasons)} finish reasons"
        )
    statuses = tuple(response_status(t, f, s) for t, s, f in zip(texts, scores, finish_reasons))
    usable = [i for i, status in enumerate(statuses) if status == OK]
    if len(usable) < 2:
        return Pair(statuses, reason=FEWER_THAN_TWO)
    best = max(usable, key=lambda i: (scores[i], -i))  # highest score, lowest index on ties
    worst = pick_rejected(scores, usable, best, rules.rejected)
    if worst is None:
        # Today's record of a tie: the chosen one on both sides (the lowest index of the tied scores).
        top = float(scores[best])  # type: ignore[arg-type]
        return Pair(statuses, best, best, top, top, reason=ALL_TIED)
    pair = Pair(statuses, best, worst, float(scores[best]), float(scores[worst]))  # type: ignore[arg-type]
    if pair.margin < rules.min_margin:  # type: ignore[operator]
        return Pair(statuses, best, worst, pair.chosen_score, pair.rejected_score, reason=LOW_MARGIN)
    return pair


def pair_columns(row: Mapping[str, Any], rules: PairingRules = PairingRules()) -> dict[str, Any]:
    """The pairing columns of one scored row (see ``BestWorstPairing``); the row's pair is ``None`` unless kept.
    A policy other than ``min`` is recorded as ``gen_response_configs.pairing_rejected``."""
    # Without finish reasons (a stock TextGeneration gives none) each is unknown, not truncated.
    finish_reasons = row.get("finish_reasons") or [None] * len(row["generations"])
    pair = pick_best_worst(row["generations"], row["ratings"], finish_reasons, rules)
    if row.get("request_error") and FINISH_ERROR in finish_reasons:
        # The responses' one request failed after its retries: no pair, for that reason.
        statuses = [REQUEST_FAILED if f == FINISH_ERROR else s for s, f in zip(pair.statuses, finish_reasons)]
        pair = Pair(tuple(statuses), reason=REQUEST_FAILED)
    status = pair_status(row.get("instruction_status", OK), pair.reason)
    kept = status == KEPT
    columns: dict[str, Any] = {
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
    if rules.rejected != MIN:
        # Recorded off the reference only: the reference's rows keep the released schema's keys.
        configs = row.get("gen_response_configs") or {}
        columns["gen_response_configs"] = {**configs, "pairing_rejected": rules.rejected}
    return columns
