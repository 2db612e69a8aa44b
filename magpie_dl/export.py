"""From pipeline rows to the released dataset: schema, split, left-out rows, summary.

The released Magpie DPO columns come first, in the released order; tag columns are
carried when the rows have them; our provenance columns (indices, scores, statuses)
follow. Rows without a pair are never dropped: they are written to ``left_out`` with
their reason and counted in the summary.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAG_COLUMNS = (
    "intent", "knowledge", "difficulty", "input_quality", "quality_explanation", "task_category",
    "other_task_category", "language", "instruct_reward", "min_neighbor_distance", "repeat_count",
    "min_similar_uuid",
)
EXTRA_COLUMNS = (
    "chosen_index", "rejected_index", "chosen_score", "rejected_score", "score_margin",
    "finish_reasons", "response_status", "raw_instruction",
)
KEPT = "kept"


def released_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row in the released schema (plus tags present and our extra columns)."""
    out: dict[str, Any] = {
        "uuid": row["uuid"],
        "instruction": row["instruction"],
        "gen_input_configs": row["gen_input_configs"],
    }
    out.update({name: row[name] for name in TAG_COLUMNS if name in row})
    out["input_length"] = len(row["instruction"])
    out["responses"] = list(row.get("generations") or [])
    out["gen_response_configs"] = row["gen_response_configs"]
    out["rewards_armorm"] = [{"score": score} for score in (row.get("ratings") or [])]
    out["chosen"] = row.get("chosen")
    out["rejected"] = row.get("rejected")
    out.update({name: row.get(name) for name in EXTRA_COLUMNS})
    return out


@dataclass
class Summary:
    """Counts at each stage and the reason for every row left out."""

    instructions: int = 0
    usable_instructions: int = 0
    responses: int = 0
    response_status: dict[str, int] = field(default_factory=dict)
    pairs_kept: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A short human-readable summary."""
        left = ", ".join(f"{k}={v}" for k, v in sorted(self.left_out.items())) or "none"
        status = ", ".join(f"{k}={v}" for k, v in sorted(self.response_status.items())) or "none"
        return [
            f"instructions: {self.instructions} ({self.usable_instructions} usable)",
            f"responses: {self.responses} ({status})",
            f"pairs kept: {self.pairs_kept} (train {self.splits.get('train', 0)}, test {self.splits.get('test', 0)})",
            f"rows left out: {sum(self.left_out.values())} ({left})",
        ]


def summarize(rows: list[dict[str, Any]]) -> Summary:
    summary = Summary(instructions=len(rows))
    statuses: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for row in rows:
        if row.get("instruction_status", "ok") == "ok":
            summary.usable_instructions += 1
        summary.responses += len(row.get("generations") or [])
        statuses.update(row.get("response_status") or [])
        if row["pair_status"] == KEPT:
            summary.pairs_kept += 1
        else:
            left[row["pair_status"]] += 1
    summary.response_status = dict(statuses)
    summary.left_out = dict(left)
    return summary


def split_rows(rows: list[dict[str, Any]], test_fraction: float, seed: int) -> dict[str, list[dict[str, Any]]]:
    """A seeded train/test split that does not depend on the order rows arrived in."""
    ordered = sorted(rows, key=lambda r: r["uuid"])
    random.Random(seed).shuffle(ordered)
    n_test = max(1, round(len(ordered) * test_fraction)) if len(ordered) > 1 else 0
    return {"train": ordered[n_test:], "test": ordered[:n_test]}


def write_dataset(
    rows: list[dict[str, Any]], out_dir: Path, test_fraction: float, seed: int
) -> Summary:
    """Write ``out_dir/dataset`` (train/test), ``out_dir/left_out`` and ``summary.json``.

    Each directory is written next to its final place and then renamed into it, so a
    reader (or a run killed mid-write) never sees half a dataset.
    """
    from datasets import Dataset, DatasetDict

    summary = summarize(rows)
    released = [{**released_row(r), "pair_status": r["pair_status"]} for r in rows]
    # One schema inferred from every row, so an empty split still has typed columns
    # (datasets cannot load back a saved split that has none).
    features = Dataset.from_list(released).features
    kept_features = features.copy()
    del kept_features["pair_status"]
    kept = [{k: v for k, v in r.items() if k != "pair_status"} for r in released if r["pair_status"] == KEPT]
    splits = split_rows(kept, test_fraction, seed)
    summary.splits = {name: len(split) for name, split in splits.items()}
    dataset = DatasetDict(
        {name: _typed_dataset(split, kept_features) for name, split in splits.items()}
    )
    _atomic_save(dataset, out_dir / "dataset")
    left_rows = sorted((r for r in released if r["pair_status"] != KEPT), key=lambda r: r["uuid"])
    _atomic_save(_typed_dataset(left_rows, features), out_dir / "left_out")
    _atomic_write_text(out_dir / "summary.json", json.dumps(summary.__dict__, indent=2, sort_keys=True))
    return summary


def _typed_dataset(rows: list[dict[str, Any]], features: Any) -> Any:
    """A dataset with exactly ``features``, also when ``rows`` is empty."""
    from datasets import Dataset

    return Dataset.from_dict({name: [row.get(name) for row in rows] for name in features}, features=features)


def _atomic_save(dataset: Any, target: Path) -> None:
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    # One shard at least: datasets writes no shard for an empty split, then cannot load it.
    shards = {name: 1 for name in dataset} if isinstance(dataset, dict) else 1
    dataset.save_to_disk(str(staging), num_shards=shards)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _atomic_write_text(target: Path, text: str) -> None:
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    staging.replace(target)
