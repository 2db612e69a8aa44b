"""Bytes a row costs while distilabel holds it for a global step, from a run's written rows.

distilabel 1.5.3 hands a global step every row at once: until the last upstream batch
arrives, its driver keeps each batch the steps before sent back, as the Python objects it
unpickled. This rebuilds that state from rows a run published (JSON lines, e.g. the
curation recipe's ``instructions.jsonl`` and ``left_out.jsonl``), without a model: the
rows less the global steps' own output columns, pickled in batches as a step worker sends
them, unpickled under ``tracemalloc``. It prints the bytes held per row, and what a row of
only the columns the global steps read would hold.

    .venv/bin/python benchmarks/row_memory.py OUT/instructions.jsonl OUT/left_out.jsonl
"""

from __future__ import annotations

import argparse
import json
import pickle
import tracemalloc
from pathlib import Path
from typing import Any

# Written by the global steps themselves (near-duplicates, selection): not in their input.
GLOBAL_OUTPUTS = ("min_neighbor_distance", "repeat_count", "min_similar_uuid", "selection_reason")
# What the curation recipe's global steps read (steps/curation.py: NearDuplicateTagging,
# CuratedSelection's inputs with every check on, and the tagging errors its report counts).
GLOBAL_INPUTS = ("uuid", "instruction", "task_category", "difficulty", "input_quality", "instruct_reward",
                 "language", "safety", "instruction_status", "tagging_errors")


def held_bytes_per_row(rows: list[dict[str, Any]], batch_size: int) -> float:
    """Bytes Python holds per row once ``rows`` are unpickled from ``batch_size``-row batches."""
    blobs = [pickle.dumps(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    tracemalloc.start()
    try:
        held = [pickle.loads(b) for b in blobs]
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del held
    return current / max(len(rows), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="JSON lines of a run's rows.")
    parser.add_argument("--rows", type=int, default=4000, help="Rows to measure (from the files' starts).")
    parser.add_argument("--batch-size", type=int, default=500, help="Rows per batch a step sends back.")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for path in args.files:
        with path.open() as f:
            rows += [json.loads(line) for line, _ in zip(f, range(args.rows))]
    rows = [{k: v for k, v in r.items() if k not in GLOBAL_OUTPUTS} for r in rows[:args.rows]]
    whole = held_bytes_per_row(rows, args.batch_size)
    slim = held_bytes_per_row([{k: r[k] for k in GLOBAL_INPUTS if k in r} for r in rows], args.batch_size)
    print(json.dumps({"rows": len(rows), "pickled_bytes_per_row": round(sum(
        len(pickle.dumps(rows[i:i + args.batch_size])) for i in range(0, len(rows), args.batch_size)) / len(rows)),
        "held_bytes_per_row": round(whole), "held_bytes_per_row_global_inputs_only": round(slim)}, indent=1))


if __name__ == "__main__":
    main()
