"""Select a high-quality, category-balanced instruction set from tagged rows.

The recipe (FIELD_NOTES §1): keep instructions with difficulty >= medium, input quality
>= good and instruct reward >= -5, drop near-duplicates, then sample per task category so
that information seeking and advice seeking (what aligned models mostly ask themselves)
do not dominate: by default as the reference did (:data:`REFERENCE_MIX`), 30% of the
selection from those two, 70% from all the others.

Every row that is not selected carries one reason (the first failed check, in the fixed
order of :data:`CHECKS`, then ``category_quota`` for rows sampled out), and the report
counts both first reasons and every failed check, so thresholds can be tuned from it.

Sampling is seeded and depends only on the *set* of rows: candidates are sorted by uuid
before sampling, and each category draws from its own generator seeded from
``(seed, category)``, so reordering the input or adding a category leaves the others'
draws unchanged.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from magpie_dl.recipe.reasons import CATEGORY_QUOTA, INSTRUCTION_UNUSABLE, NEAR_DUPLICATE, SELECTION_CHECKS, is_usable
from magpie_dl.curation.tagging import DIFFICULTY_LEVELS, QUALITY_LEVELS

NAMED_MIXES: tuple[str, ...] = ("reference", "uniform", "natural")

# The reference's mix (magpie-align/magpie, its issue #36): 30K of its 100K instructions
# were sampled from Information seeking + Advice seeking, the rest from the other
# categories. Groups of categories with their share; ``None`` is every category not named
# before it. Within a group, rows are a plain random sample (quotas by eligible count).
REFERENCE_MIX: tuple[tuple[frozenset[str] | None, float], ...] = (
    (frozenset({"Information seeking", "Advice seeking"}), 0.3),
    (None, 0.7),
)

# Checks in the order a row's drop reason is chosen (described in reasons.SELECTION_CHECKS).
CHECKS: tuple[str, ...] = tuple(SELECTION_CHECKS)
QUOTA_REASON = CATEGORY_QUOTA
MISSING = "(missing)"  # the category stratum of untagged rows


class SelectionRules(BaseModel):
    """What to keep and how many: the curation recipe's ``selection`` section.

    Attributes:
        min_difficulty: lowest difficulty kept (None: no difficulty check).
        min_input_quality: lowest input quality kept (None: no check).
        min_instruct_reward: lowest instruct reward kept (None: no check).
        remove_duplicates: drop rows whose ``min_similar_uuid`` names another row.
        languages: allowed language codes (``EN``...); None (or empty) for any.
        require_safe: keep only rows the guard model judged ``safe``.
        require_category: drop rows without a task category; when off they form their
            own stratum (``(missing)``) in the per-category sampling.
        target_size: rows to select; None keeps every eligible row.
        category_mix: ``reference`` (the default: 30% from Information seeking +
            Advice seeking, 70% from the other categories, see :data:`REFERENCE_MIX`),
            ``uniform`` (equal share per category present), ``natural`` (proportional to
            what is eligible, i.e. a plain random sample), or weights per category
            (categories absent or at weight 0 are not selected).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    min_difficulty: str | None = Field("medium", description="Lowest difficulty kept (null: no check).")
    min_input_quality: str | None = Field("good", description="Lowest input quality kept (null: no check).")
    min_instruct_reward: float | None = Field(-5.0, description="Lowest instruct reward kept (null: no check).")
    remove_duplicates: bool = Field(True, description="Drop near-duplicates.")
    languages: list[str] | None = Field(None, description="Allowed languages, e.g. EN (null: any).")
    require_safe: bool = Field(False, description="Keep only rows the guard judged safe (needs tagging.guard_model).")
    require_category: bool = Field(True, description="Drop rows without a task category (else sampled as '(missing)').")
    target_size: int | None = Field(None, ge=0, description="Instructions to select (null: all eligible).")
    category_mix: str | dict[str, float] = Field(
        "reference",
        description="reference (the released recipe's: 30% Information + Advice seeking, 70% the rest), "
        "uniform, natural, or weights per category.",
    )

    @field_validator("min_difficulty")
    @classmethod
    def _difficulty(cls, value: str | None) -> str | None:
        if value is not None and value not in DIFFICULTY_LEVELS:
            raise ValueError(f"must be one of {', '.join(DIFFICULTY_LEVELS)}")
        return value

    @field_validator("min_input_quality")
    @classmethod
    def _quality(cls, value: str | None) -> str | None:
        if value is not None and value not in QUALITY_LEVELS:
            raise ValueError(f"must be one of {', '.join(QUALITY_LEVELS)}")
        return value

    @field_validator("category_mix")
    @classmethod
    def _mix(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(value, str):
            if value not in NAMED_MIXES:
                raise ValueError(f"must be one of {', '.join(NAMED_MIXES)} or a mapping of weights per category")
        elif any(not (w >= 0 and math.isfinite(w)) for w in value.values()) or not any(value.values()):
            raise ValueError("weights must be finite, >= 0, and not all 0")
        return value

    def to_selection_config(self, seed: int) -> SelectionConfig:
        """These rules with the sampling seed (a recipe's run seed)."""
        return SelectionConfig(**self.model_dump(), seed=seed)


class SelectionConfig(SelectionRules):
    """The rules (:class:`SelectionRules`) and the sampling seed: what :func:`select_rows` takes."""

    seed: int = Field(0, description="Sampling seed.")


@dataclass
class SelectionReport:
    """What selection did; JSON-able through :meth:`to_dict`."""

    input_rows: int
    selected_rows: int
    target_size: int | None
    dropped: dict[str, int] = field(default_factory=dict)
    failed_checks: dict[str, int] = field(default_factory=dict)
    category_mix_before: dict[str, int] = field(default_factory=dict)
    category_mix_eligible: dict[str, int] = field(default_factory=dict)
    category_mix_after: dict[str, int] = field(default_factory=dict)
    quotas: dict[str, int] = field(default_factory=dict)
    shortfall: int = 0
    # Judge answers that could not be parsed, per tag task (from ``tagging_errors``).
    tagging_failures: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """A plain-text summary for logs."""
        lines = [
            f"selected {self.selected_rows} of {self.input_rows} rows"
            + (f" (target {self.target_size}, short by {self.shortfall})" if self.target_size is not None else "")
        ]
        for reason, count in self.dropped.items():
            lines.append(f"  dropped {reason}: {count}")
        for task, count in self.tagging_failures.items():
            lines.append(f"  unparsed judge answers ({task}): {count}")
        lines.append(f"  {'category':<22}{'before':>8}{'eligible':>10}{'after':>8}{'after %':>9}")
        cats = sorted(set(self.category_mix_before) | set(self.category_mix_after), key=str)
        for cat in cats:
            after = self.category_mix_after.get(cat, 0)
            share = 100 * after / self.selected_rows if self.selected_rows else 0.0
            lines.append(
                f"  {cat:<22}{self.category_mix_before.get(cat, 0):>8}"
                f"{self.category_mix_eligible.get(cat, 0):>10}{after:>8}{share:>8.1f}%"
            )
        return "\n".join(lines)


def _rank(value: Any, levels: Sequence[str]) -> int | None:
    return levels.index(value) if isinstance(value, str) and value in levels else None


def _category(row: Mapping[str, Any]) -> str | None:
    cat = row.get("task_category")
    return cat if isinstance(cat, str) and cat else None


def failed_checks(row: Mapping[str, Any], config: SelectionConfig) -> list[str]:
    """Every check ``row`` fails, in :data:`CHECKS` order (empty: eligible)."""
    failed: list[str] = []
    # The generator marks unusable queries (empty, truncated, exact repeats) and keeps them.
    if not is_usable(row):
        failed.append(INSTRUCTION_UNUSABLE)
    if config.min_difficulty is not None:
        rank = _rank(row.get("difficulty"), DIFFICULTY_LEVELS)
        if rank is None:
            failed.append("difficulty_missing")
        elif rank < DIFFICULTY_LEVELS.index(config.min_difficulty):
            failed.append("difficulty_below_min")
    if config.min_input_quality is not None:
        rank = _rank(row.get("input_quality"), QUALITY_LEVELS)
        if rank is None:
            failed.append("input_quality_missing")
        elif rank < QUALITY_LEVELS.index(config.min_input_quality):
            failed.append("input_quality_below_min")
    if config.min_instruct_reward is not None:
        reward = row.get("instruct_reward")
        if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
            failed.append("instruct_reward_missing")
        elif reward < config.min_instruct_reward:
            failed.append("instruct_reward_below_min")
    if config.languages:
        allowed = {code.upper() for code in config.languages}
        if str(row.get("language") or "").upper() not in allowed:
            failed.append("language_not_allowed")
    if config.require_safe:
        verdict = row.get("safety")
        if verdict not in ("safe", "unsafe"):
            failed.append("safety_missing")
        elif verdict == "unsafe":
            failed.append("unsafe")
    if config.remove_duplicates:
        rep = row.get("min_similar_uuid")
        if rep is not None and rep != row.get("uuid"):
            failed.append(NEAR_DUPLICATE)
    cat = _category(row)
    if cat is None:
        if config.require_category:
            failed.append("task_category_missing")
    elif isinstance(config.category_mix, Mapping) and not config.category_mix.get(cat, 0):
        failed.append("category_not_in_mix")
    return failed


def allocate_quotas(
    available: Mapping[str, int], weights: Mapping[str, float], target: int
) -> dict[str, int]:
    """Split ``target`` rows across categories in proportion to ``weights``.

    Water-filling: a category with fewer rows than its share gives all it has and its
    unused share is spread over the others by weight, so the total reaches
    ``min(target, rows available)``. Integer rounding uses largest remainders, ties by
    category name, so quotas are deterministic.
    """
    quotas = dict.fromkeys(available, 0)
    active = {c for c, n in available.items() if n > 0 and weights.get(c, 0) > 0}
    remaining = min(target, sum(available[c] for c in active))
    while remaining > 0 and active:
        total_w = sum(weights[c] for c in active)
        share = {c: remaining * weights[c] / total_w for c in active}
        full = {c for c in active if available[c] - quotas[c] <= share[c]}
        if full:
            for c in full:
                remaining -= available[c] - quotas[c]
                quotas[c] = available[c]
            active -= full
            continue
        floors = {c: math.floor(share[c]) for c in active}
        extra = remaining - sum(floors.values())
        for c in sorted(active, key=lambda c: (floors[c] - share[c], c))[:extra]:
            floors[c] += 1
        for c, q in floors.items():
            quotas[c] += q
        remaining = 0
    return quotas


def grouped_quotas(
    available: Mapping[str, int],
    groups: Sequence[tuple[frozenset[str] | None, float]],
    target: int,
) -> dict[str, int]:
    """Split ``target`` rows across groups of categories by share, then within each group
    in proportion to what each category has (a random sample of the group).

    A category belongs to the first group naming it; a ``None`` group takes the rest. A
    group short of its share gives all it has and the others fill in (water-filling, as
    in :func:`allocate_quotas`), so the total is still ``min(target, rows available)``.
    """
    members: dict[int, dict[str, int]] = {g: {} for g in range(len(groups))}
    for cat, n in available.items():
        g = next((g for g, (cats, _) in enumerate(groups) if cats is None or cat in cats), None)
        if g is not None:
            members[g][cat] = n
    names = {g: f"group {g}" for g in members}
    group_quotas = allocate_quotas(
        {names[g]: sum(cats.values()) for g, cats in members.items()},
        {names[g]: share for g, (_, share) in enumerate(groups)},
        target,
    )
    quotas = dict.fromkeys(available, 0)
    for g, cats in members.items():
        quotas.update(allocate_quotas(cats, {c: float(n) for c, n in cats.items()}, group_quotas[names[g]]))
    return quotas


def _category_rng(seed: int, category: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])


def select_rows(
    rows: Sequence[Mapping[str, Any]], config: SelectionConfig | None = None
) -> tuple[list[str | None], SelectionReport]:
    """Decide every row: ``reasons[i]`` is None when row ``i`` is selected.

    Rows need ``uuid`` (unique) and the tag columns the enabled checks read
    (``difficulty``, ``input_quality``, ``instruct_reward``, ``language``,
    ``min_similar_uuid``, ``task_category``).
    """
    config = config or SelectionConfig()
    reasons: list[str | None] = [None] * len(rows)
    failures: Counter[str] = Counter()
    eligible: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        failed = failed_checks(row, config)
        failures.update(failed)
        if failed:
            reasons[i] = failed[0]
        else:
            eligible.setdefault(_category(row) or MISSING, []).append(i)

    available = {c: len(idx) for c, idx in eligible.items()}
    if config.target_size is None:
        quotas = dict(available)
    else:
        mix = config.category_mix
        if mix == "reference":
            quotas = grouped_quotas(available, REFERENCE_MIX, config.target_size)
        else:
            if mix == "uniform":
                weights: Mapping[str, float] = dict.fromkeys(available, 1.0)
            elif mix == "natural":
                weights = {c: float(n) for c, n in available.items()}
            else:
                weights = mix  # type: ignore[assignment]
            quotas = allocate_quotas(available, weights, config.target_size)

    for cat, idx in eligible.items():
        quota = quotas.get(cat, 0)
        if quota >= len(idx):
            continue
        # Canonical (uuid) order first, so the draw does not depend on input order.
        idx = sorted(idx, key=lambda i: str(rows[i].get("uuid")))
        chosen = set(_category_rng(config.seed, cat).choice(len(idx), size=quota, replace=False).tolist())
        for pos, i in enumerate(idx):
            if pos not in chosen:
                reasons[i] = QUOTA_REASON

    selected = sum(r is None for r in reasons)
    report = SelectionReport(
        input_rows=len(rows),
        selected_rows=selected,
        target_size=config.target_size,
        dropped=dict(Counter(r for r in reasons if r is not None).most_common()),
        failed_checks=dict(failures.most_common()),
        category_mix_before=_mix(rows, range(len(rows))),
        category_mix_eligible=dict(sorted(available.items())),
        category_mix_after=_mix(rows, [i for i, r in enumerate(reasons) if r is None]),
        quotas=dict(sorted(quotas.items())),
        shortfall=max(0, (config.target_size or 0) - selected) if config.target_size is not None else 0,
        tagging_failures=dict(
            sorted(Counter(e.get("task", "?") for r in rows for e in (r.get("tagging_errors") or [])).items())
        ),
    )
    return reasons, report


def _mix(rows: Sequence[Mapping[str, Any]], idx: Sequence[int] | range) -> dict[str, int]:
    counts = Counter(_category(rows[i]) or MISSING for i in idx)
    return dict(sorted(counts.items()))
