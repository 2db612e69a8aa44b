"""The curation recipe's export streams the run's Arrow rows and writes what the list export wrote."""

from __future__ import annotations

import datetime
import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from magpie_dl.release.curation import split_selected, write_outputs

REASONS = ("near_duplicate", "category_quota", "instruction_unusable", "below_min_difficulty")


def mixed_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Selected and rejected rows interleaved, uuids in no order (non-ASCII, mixed case), and the
    values whose JSON rendering could drift: floats (tiny, huge, negative zero, NaN), None,
    nested dicts and lists, a timestamp (``default=str``), non-ASCII text."""
    rng = random.Random(seed)
    floats = [0.1, 1e-7, 1.5e20, -0.0, float("nan"), -5.0, 2.0, None]
    rows = []
    for i in range(n):
        rejected = rng.random() < 0.5
        rows.append({
            "uuid": rng.choice(["a", "B", "é", "z", "Ω", "0"]) + f"{rng.randrange(10**9):09d}-{i}",
            "instruction": rng.choice(["Sort a list?", "Écris un poème « court »", "写一首诗", "tab\there \"q\""]),
            "gen_input_configs": {"temperature": rng.choice([0.8, 1.0]), "seed": i, "stop": ["<|eot_id|>"]},
            "instruct_reward": rng.choice(floats),
            "min_neighbor_distance": rng.choice(floats),
            "repeat_count": rng.randrange(3),
            "min_similar_uuid": rng.choice([None, "a1"]),
            "other_task_category": rng.choice([[], ["Reasoning", "Math"], None]),
            "tagging_errors": rng.choice([[], [{"task": "quality", "error": "no JSON", "raw_output": "{"}]]),
            "created": datetime.datetime(2026, 1, 1, 12, 0, i % 60),
            "selection_reason": rng.choice(REASONS) if rejected else None,
        })
    return rows


def memory_mapped(rows: list[dict[str, Any]], where: Path) -> Dataset:
    """``rows`` as the pipeline hands them over: an Arrow dataset on disk, memory-mapped."""
    Dataset.from_list(rows).save_to_disk(str(where))
    return load_from_disk(str(where))


def list_export(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """What the recipe wrote before it streamed (every row in a list): the expected files."""
    rows = sorted(rows, key=lambda row: row["uuid"])
    out_dir.mkdir(parents=True)
    for name, part in (("instructions.jsonl", [r for r in rows if r.get("selection_reason") is None]),
                       ("left_out.jsonl", [r for r in rows if r.get("selection_reason") is not None])):
        (out_dir / name).write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in part))


def test_streamed_export_writes_what_the_list_export_wrote(tmp_path) -> None:
    source = memory_mapped(mixed_rows(500), tmp_path / "run")
    list_export(source.to_list(), tmp_path / "expected")
    assert write_outputs(source, tmp_path / "out") == (
        sum(r is None for r in source["selection_reason"]), sum(r is not None for r in source["selection_reason"]))
    for name in ("instructions.jsonl", "left_out.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes(), name
    selected = [json.loads(line) for line in (tmp_path / "expected" / "instructions.jsonl").read_text().splitlines()]
    dataset = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert [json.dumps(r, default=str) for r in dataset.to_list()] == [json.dumps(r, default=str) for r in selected]
    assert dataset.features == source.features  # the run's column types, not ones guessed from the selected rows


def test_split_keeps_every_row_once_and_in_uuid_order_even_with_repeated_uuids(tmp_path) -> None:
    rows = mixed_rows(60, seed=1)
    for row in rows[::7]:
        row["uuid"] = "same"  # a stable sort keeps their order of arrival, as Python's sorted does
    source = memory_mapped(rows, tmp_path / "run")
    selected, rejected = split_selected(source)
    ordered = sorted(source.to_list(), key=lambda row: row["uuid"])
    assert selected["created"] == [r["created"] for r in ordered if r["selection_reason"] is None]
    assert rejected["created"] == [r["created"] for r in ordered if r["selection_reason"] is not None]
    whole, none = split_selected(source.remove_columns("selection_reason"))  # nothing judged: all selected
    assert (len(whole), len(none)) == (len(source), 0)


def test_export_never_holds_every_row_in_memory(tmp_path) -> None:
    """50K rows of 400 B: the export's Python objects stay a fraction of the rows' size (a batch at a
    time); the list export held all of them (and a sorted copy)."""
    n, text = 50_000, "x" * 400
    Dataset.from_dict({
        "uuid": [f"{(i * 7919) % n:05d}" for i in range(n)],
        "instruction": [text] * n,
        "selection_reason": [None if i % 2 else "near_duplicate" for i in range(n)],
    }).save_to_disk(str(tmp_path / "run"))
    source = load_from_disk(str(tmp_path / "run"))
    tracemalloc.start()
    try:
        assert write_outputs(source, tmp_path / "out") == (n // 2, n // 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * len(text) / 3, f"peak {peak / 1e6:.1f} MB for {n * len(text) / 1e6:.0f} MB of rows"
