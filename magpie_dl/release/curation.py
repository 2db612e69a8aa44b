"""The curation recipe's release, written from the run's rows as they lie in Arrow.

``dataset/`` (the selected instructions, ``datasets.save_to_disk``), ``instructions.jsonl``
(the same rows as JSON lines) and ``left_out.jsonl`` (every rejected row with its
``selection_reason``). Rows are selected and sorted on the Arrow table, then written a
batch at a time (:func:`magpie_dl.release.export.iter_rows`): 1M instructions export in about the
memory a few thousand take, as in the DPO recipe's export (:func:`magpie_dl.release.export.write_dataset`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from magpie_dl.release.export import iter_rows

if TYPE_CHECKING:
    from datasets import Dataset

REASON = "selection_reason"  # None: the row was selected


def split_selected(rows: Dataset) -> tuple[Dataset, Dataset]:
    """(selected, rejected) by ``selection_reason``, each sorted by uuid (views of ``rows``, no copy).

    Rows reach the end of the pipeline in the order their batches finished (on Ray,
    whichever replica was first); sorting makes the files independent of the layout.
    The sort is stable and compares uuids by code point, as Python's ``sorted`` does.
    """
    import pyarrow.compute as pc

    if not len(rows):
        return rows, rows
    keys = rows.select_columns([c for c in ("uuid", REASON) if c in rows.column_names]).with_format("arrow")[:]
    # int64 positions: datasets' ``select`` cannot search uint64 ones (what ``sort_indices`` gives).
    order = pc.sort_indices(keys, sort_keys=[("uuid", "ascending")]).cast("int64")
    if REASON not in keys.column_names:  # nothing was judged: every row is selected
        return rows.select(order.to_numpy()), rows.select([])
    chosen = pc.is_null(pc.take(keys.column(REASON), order))
    return (rows.select(pc.filter(order, chosen).to_numpy()),
            rows.select(pc.filter(order, pc.invert(chosen)).to_numpy()))


def write_outputs(rows: Dataset | Iterable[dict[str, Any]], out_dir: Path) -> tuple[int, int]:
    """Write the curated set (``dataset/`` and ``instructions.jsonl``) and ``left_out.jsonl``;
    returns (selected, rejected) row counts.

    ``rows`` is best the (memory-mapped) ``datasets.Dataset`` the pipeline returned; a
    list of dicts is turned into one first.
    """
    from datasets import Dataset

    source = rows if isinstance(rows, Dataset) else Dataset.from_list(list(rows))
    selected, rejected = split_selected(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("instructions.jsonl", selected), ("left_out.jsonl", rejected)):
        with (out_dir / name).open("w", encoding="utf-8") as handle:  # "w": a rerun replaces, never appends
            for row in iter_rows(part):
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    if len(selected):
        # The pipeline's own column types (not ones guessed again from the selected rows' values).
        selected.save_to_disk(str(out_dir / "dataset"))
    return len(selected), len(rejected)

