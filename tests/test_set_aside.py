"""Rows set aside around the global steps come back by uuid, as they would have been had they gone through whole
(magpie_dl.run.set_aside; the recipe-level check is tests/test_scale.py's curation tier)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from magpie_dl.run.set_aside import MissingSetAside, join_set_aside, run_rows

SENT = ["uuid", "instruction", "embedding", "task_category"]


def _loaded(rows: list[dict], tmp: Path, name: str, schema: pa.Schema | None = None):
    """``rows`` as distilabel hands a leaf's rows over: parquet loaded into a memory-mapped dataset."""
    from datasets import Dataset

    path = tmp / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return Dataset.from_parquet(str(path), cache_dir=str(tmp / f"hf-{name}"))


def _whole(i: int) -> dict:
    return {"uuid": f"u{i:02d}", "instruction": f"q{i}", "embedding": [float(i)], "task_category": "Math",
            "responses": [f"long answer {i}" * 3], "configs": {"temperature": 0.8, "seed": i},
            "tagging_errors": [] if i % 2 else [{"task": "difficulty", "error": "no JSON"}]}


def _after_global_steps(i: int) -> dict:
    # The global steps dropped `embedding` (NearDuplicateTagging does) and added two columns.
    return {"uuid": f"u{i:02d}", "instruction": f"q{i}", "task_category": "Math",
            "min_similar_uuid": None if i != 3 else "u01", "selection_reason": "near_duplicate" if i == 3 else None}


@pytest.fixture
def leaves(tmp_path):
    aside = _loaded([_whole(i) for i in range(6)], tmp_path, "set_aside")
    # In another order than the set-aside rows, and without row 5 (a global step may drop rows).
    rows = _loaded([_after_global_steps(i) for i in (4, 0, 3, 1, 2)], tmp_path, "selection")
    return rows, aside


def test_the_joined_rows_are_the_whole_rows_with_what_the_global_steps_made(leaves):
    rows, aside = leaves
    joined = join_set_aside(rows, aside, SENT)
    # The whole rows' column order, less what the global steps dropped, then what they added.
    assert joined.column_names == ["uuid", "instruction", "task_category", "responses", "configs", "tagging_errors",
                                   "min_similar_uuid", "selection_reason"]
    expected = [{k: v for k, v in (_whole(i) | _after_global_steps(i)).items() if k != "embedding"} for i in (4, 0, 3, 1, 2)]
    assert joined.to_list() == expected
    # Each column keeps the type it had in its leaf (not one guessed again from the values).
    assert joined.features["configs"] == aside.features["configs"]
    assert joined.features["selection_reason"] == rows.features["selection_reason"]
    # Written beside the global steps' loaded rows: deleting that copy deletes the join too.
    assert Path(joined.cache_files[0]["filename"]).parent == Path(rows.cache_files[0]["filename"]).parent


def test_a_row_without_its_set_aside_part_is_a_run_that_did_not_finish(tmp_path):
    aside = _loaded([_whole(i) for i in range(2)], tmp_path, "set_aside")
    rows = _loaded([_after_global_steps(i) for i in range(3)], tmp_path, "selection")
    with pytest.raises(MissingSetAside):
        join_set_aside(rows, aside, SENT)
    # As the run's rows: none (the driver reports the rows missing and publishes nothing).
    assert run_rows({"selection": rows, "set_aside": aside}, ["selection", "set_aside"], {"set_aside": SENT}) is None


def test_the_run_rows_need_both_leaves(leaves):
    rows, aside = leaves
    # distilabel names a lone leaf "default": the global steps' leaf never got its rows.
    assert run_rows({"default": aside}, ["selection", "set_aside"], {"set_aside": SENT}) is None
    assert not Path(aside.cache_files[0]["filename"]).exists()  # its loaded copy is not left behind


def test_the_run_rows_of_both_leaves_are_joined_and_the_set_aside_copy_deleted(leaves):
    rows, aside = leaves
    joined = run_rows({"selection": rows, "set_aside": aside}, ["selection", "set_aside"], {"set_aside": SENT})
    assert len(joined) == 5 and "responses" in joined.column_names
    assert not Path(aside.cache_files[0]["filename"]).exists()
    # A pipeline with nothing set aside: its one leaf's rows, untouched.
    assert run_rows({"default": rows}, ["selection"], {}) is rows
