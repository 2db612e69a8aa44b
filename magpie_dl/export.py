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
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from magpie_dl.reasons import KEPT, is_usable

if TYPE_CHECKING:
    from datasets import Dataset, Features

TAG_COLUMNS = (
    "intent", "knowledge", "difficulty", "input_quality", "quality_explanation", "task_category",
    "other_task_category", "language", "instruct_reward", "min_neighbor_distance", "repeat_count",
    "min_similar_uuid",
)
EXTRA_COLUMNS = (
    "chosen_index", "rejected_index", "chosen_score", "rejected_score", "score_margin",
    "finish_reasons", "response_status", "rating_errors", "raw_instruction",
)
# Present only when a step wrote them: the think blocks of responses written with thinking on.
OPTIONAL_COLUMNS = ("reasoning",)


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
    out.update({name: row[name] for name in OPTIONAL_COLUMNS if name in row})
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


SUMMARY_COLUMNS = ("instruction_status", "generations", "response_status", "pair_status")
BATCH_ROWS = 2000  # rows in memory at a time while exporting


def summarize(rows: Iterable[dict[str, Any]]) -> Summary:
    summary = Summary()
    statuses: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for row in rows:
        summary.instructions += 1
        if is_usable(row):
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
    train, test = split_order([r["uuid"] for r in rows], test_fraction, seed)
    return {"train": [rows[i] for i in train], "test": [rows[i] for i in test]}


def split_order(uuids: Sequence[str], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions of the train and test rows, in their written order.

    Rows are put in uuid order, then shuffled with the run seed: the split and the order
    depend on the rows, never on the order they arrived in. The test split takes
    :func:`num_test_rows` rows: the first ones of that order.
    """
    ordered = sorted(range(len(uuids)), key=uuids.__getitem__)
    random.Random(seed).shuffle(ordered)
    n_test = num_test_rows(len(ordered), test_fraction)
    return ordered[n_test:], ordered[:n_test]


def num_test_rows(rows: int, test_fraction: float) -> int:
    """How many of ``rows`` pairs go to the test split: ``rows * test_fraction`` rounded to
    the nearest (Python's ``round``), and none at all when that share is under one row.

    A tiny set is not forced to give up a test row (2 pairs at 2% used to put one, half
    the set, in ``test``); from one row's worth up the count follows the ratio (98/2).
    """
    share = rows * test_fraction
    return round(share) if share >= 1 else 0


def write_dataset(
    rows: Dataset | Iterable[dict[str, Any]], out_dir: Path, test_fraction: float, seed: int
) -> Summary:
    """Write ``out_dir/dataset`` (train/test), ``out_dir/left_out`` and ``summary.json``.

    ``rows`` is the pipeline's output, best as the (memory-mapped) ``datasets.Dataset``
    distilabel returns: rows then pass through memory ``BATCH_ROWS`` at a time, so a
    1M-row run exports in about the memory a 1K-row run does. Each directory is written
    next to its final place and then renamed into it, so a reader (or a run killed
    mid-write) never sees half a dataset.
    """
    from datasets import Dataset, DatasetDict

    source = rows if isinstance(rows, Dataset) else Dataset.from_list(list(rows))
    summary = summarize(iter_rows(source, [c for c in SUMMARY_COLUMNS if c in source.column_names]))
    staging = out_dir / f".released-{os.getpid()}.arrow"
    try:
        # One schema for every row, from the source's, so an empty split still has typed
        # columns (datasets cannot load back a saved split that has none).
        released = source.map(
            _released_batch,
            batched=True,
            batch_size=BATCH_ROWS,
            writer_batch_size=BATCH_ROWS,
            remove_columns=source.column_names,
            features=released_features(source.features),
            cache_file_name=str(staging),
            load_from_cache_file=False,
        )
        status = released.data.column("pair_status").to_pylist()
        kept = [i for i, value in enumerate(status) if value == KEPT]
        left = [i for i, value in enumerate(status) if value != KEPT]
        uuids = released.data.column("uuid").to_pylist()
        train, test = split_order([uuids[i] for i in kept], test_fraction, seed)
        left.sort(key=uuids.__getitem__)
        del status, uuids
        summary.splits = {"train": len(train), "test": len(test)}
        pairs = released.remove_columns("pair_status")
        dataset = DatasetDict({
            "train": pairs.select([kept[i] for i in train]),
            "test": pairs.select([kept[i] for i in test]),
        })
        _atomic_save(dataset, out_dir / "dataset")
        _atomic_save(released.select(left), out_dir / "left_out")
    finally:
        staging.unlink(missing_ok=True)
    _atomic_write_text(out_dir / "summary.json", json.dumps(summary.__dict__, indent=2, sort_keys=True))
    return summary


def discard_loaded_copy(dataset: Dataset) -> None:
    """Delete the Arrow copy ``datasets`` made when distilabel loaded the run's output.

    distilabel reads its output with ``load_dataset``, which converts it into the shared
    Hugging Face cache (``~/.cache/huggingface/datasets``) and never removes it: every run
    would leave a full copy of its rows there (14 GB for 1M rows of five ~1.5 KB
    responses). Once the dataset is exported that copy serves nothing. Only the directories
    holding this dataset's own cache files are removed.
    """
    for folder in {Path(entry["filename"]).parent for entry in dataset.cache_files}:
        shutil.rmtree(folder, ignore_errors=True)


def released_features(source: Features) -> Features:
    """The released rows' schema (``released_row`` plus ``pair_status``): a column the pipeline's
    rows have keeps its type there, any other takes its declared type (:mod:`magpie_dl.schema`)."""
    import pyarrow as pa
    from datasets import Features

    from magpie_dl.schema import column_types

    declared = column_types()

    def like(name: str) -> Any:
        if name in source:
            return source[name]
        return Features.from_arrow_schema(pa.schema([(name, declared.get(name, pa.null()))]))[name]

    types: dict[str, Any] = {name: like(name) for name in ("uuid", "instruction", "gen_input_configs")}
    types.update({name: source[name] for name in TAG_COLUMNS if name in source})
    types["input_length"] = like("input_length")
    types["responses"] = source["generations"] if "generations" in source else like("responses")
    types["gen_response_configs"] = like("gen_response_configs")
    types["rewards_armorm"] = like("rewards_armorm")
    types.update({name: like(name) for name in ("chosen", "rejected", *EXTRA_COLUMNS)})
    types.update({name: source[name] for name in OPTIONAL_COLUMNS if name in source})
    types["pair_status"] = like("pair_status")
    return Features(types)


def _released_batch(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    rows = [{**released_row(row), "pair_status": row["pair_status"]} for row in _rows_of(batch)]
    return {name: [row[name] for row in rows] for name in rows[0]} if rows else {}


def _rows_of(batch: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    names = list(batch)
    return (dict(zip(names, values)) for values in zip(*(batch[name] for name in names)))


def iter_rows(source: Dataset, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of ``source`` (``columns`` only, if given) as dicts, ``BATCH_ROWS`` in memory at a time."""
    for batch in (source if columns is None else source.select_columns(columns)).iter(batch_size=BATCH_ROWS):
        yield from _rows_of(batch)


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
