"""The run's leaf rows on disk: no chunk decides a column's type (magpie_dl.run.leaf_output, magpie_dl.recipe.schema)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from magpie_dl.config.dpo import REPO_ROOT
from magpie_dl import distilabel_compat
from magpie_dl.run.leaf_output import LeafFiles, conform
from magpie_dl.recipe.schema import TypeConflict, column_types, merge_types

# Each case: (column, first chunk's values, later chunk's values), 60 rows each.
LATE_VALUES = {
    "empty_lists_then_strings": ([[]] * 60, [["cut"]] * 60),
    "none_then_strings": ([None] * 60, ["text"] * 60),
    "struct_missing_a_field": ([{"a": 1}] * 60, [{"a": 2, "b": "late"}] * 60),
    "list_of_structs_gaining_a_field": ([[{"task": "x"}]] * 60, [[{"task": "y", "error": "bad"}]] * 60),
    "ints_then_floats": ([1] * 60, [0.5] * 60),
}


def reconciling_buffer(path, steps: set[str]):
    """The run's write buffer: distilabel's, its chunks written by our LeafFiles."""
    buffer = distilabel_compat._buffer_class()(path, steps)
    buffer.writer = LeafFiles()
    return buffer


def _write_through(make_buffer, tmp_path, chunks: list[list[dict]]):
    from distilabel.distiset import create_distiset
    from distilabel.pipeline.batch import _Batch

    data_dir = tmp_path / "data"
    buffer = make_buffer(data_dir / "steps_outputs", {"leaf"})
    for seq_no, rows in enumerate(chunks):
        buffer.add_batch(_Batch(seq_no=seq_no, step_name="leaf", last_batch=False, data=[rows]))
    buffer.close()
    if getattr(getattr(buffer, "writer", None), "failure", None) is not None:
        raise buffer.writer.failure
    return create_distiset(data_dir)["default"]["train"]


def _chunks(column: str, first: list, later: list) -> list[list[dict]]:
    return [[{"n": i, column: v} for i, v in enumerate(first)],
            [{"n": 60 + i, column: v} for i, v in enumerate(later)]]


@pytest.mark.parametrize("case", sorted(LATE_VALUES))
def test_a_column_reads_back_what_every_chunk_held(tmp_path, case):
    first, later = LATE_VALUES[case]
    rows = _write_through(reconciling_buffer, tmp_path, _chunks("user_column", first, later))
    values = rows["user_column"]
    expected_late = later[0]
    if isinstance(expected_late, dict):  # a field one chunk lacked reads back as None there
        assert values[0] == {"a": 1, "b": None} and values[-1] == expected_late
    elif isinstance(expected_late, list) and isinstance(expected_late[0], dict):
        assert values[0] == [{"task": "x", "error": None}] and values[-1] == expected_late
    else:
        assert values[:60] == first and values[60:] == later
    assert rows["n"] == list(range(120))


def test_distilabel_s_own_buffer_still_loses_such_a_column(tmp_path):
    """What the reconciling buffer is for: distilabel 1.5.3 fixes the type from the first chunk."""
    from distilabel.pipeline.write_buffer import _WriteBuffer

    with pytest.raises(pa.ArrowNotImplementedError, match="from string to null"):
        _write_through(_WriteBuffer, tmp_path, _chunks("cleaning_removed", *LATE_VALUES["empty_lists_then_strings"]))


def test_declared_columns_are_typed_from_the_first_chunk(tmp_path):
    """Our own columns never depend on a chunk: a first chunk of [] / None is already list<string> / double."""
    from distilabel.pipeline.batch import _Batch

    buffer = reconciling_buffer(tmp_path / "out", {"leaf"})
    rows = [{"rating_errors": [None, None], "chosen_score": None, "cleaning_actions": []}] * 50
    buffer.add_batch(_Batch(seq_no=0, step_name="leaf", last_batch=False, data=[rows]))
    import pyarrow.parquet as pq

    schema = pq.read_schema(next((tmp_path / "out" / "leaf").glob("*.parquet")))
    types = column_types()
    for name in ("rating_errors", "chosen_score", "cleaning_actions"):
        assert schema.field(name).type == types[name]


def test_a_user_column_with_conflicting_types_is_kept_as_json_text(tmp_path, caplog):
    chunks = _chunks("user_column", [1] * 60, ["one"] * 60)
    with caplog.at_level("WARNING", logger="magpie_dl"):
        rows = _write_through(reconciling_buffer, tmp_path, chunks)
    assert [json.loads(v) for v in rows["user_column"]] == [1] * 60 + ["one"] * 60
    assert "'user_column' holds values of different types" in caplog.text


def test_merge_types_is_permissive_only_where_no_value_changes():
    assert merge_types(pa.list_(pa.null()), pa.list_(pa.string())) == pa.list_(pa.string())
    assert merge_types(pa.struct([("a", pa.int64())]), pa.struct([("b", pa.string())])) == pa.struct(
        [("a", pa.int64()), ("b", pa.string())])
    with pytest.raises(TypeConflict):
        merge_types(pa.int64(), pa.string())


def test_conform_adds_missing_columns_as_nulls():
    table = pa.table({"a": pa.array([None, None])})
    schema = pa.schema([("a", pa.list_(pa.string())), ("b", pa.float64())])
    assert conform(table, schema).to_pylist() == [{"a": None, "b": None}] * 2


LATE_STRINGS_RUN = textwrap.dedent(
    """
    import json, sys
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from magpie_dl.run.driver import run_pipeline

    rows = [{"uuid": str(i), "cleaning_removed": [], "note": None} for i in range(60)]
    rows += [{"uuid": str(i), "cleaning_removed": ["cut"], "note": "late"} for i in range(60, 120)]
    with Pipeline(name="late-strings", cache_dir=sys.argv[1]) as pipeline:
        LoadDataFromDicts(data=rows, batch_size=60)
    out = run_pipeline(pipeline)
    print(json.dumps({"rows": len(out), "removed": out["cleaning_removed"][-1], "note": out["note"][-1],
                      "pipeline_unchanged": "_setup_write_buffer" not in vars(pipeline)}))
    """
)


def test_a_pipeline_whose_leaf_gets_strings_after_its_first_chunk_finishes(tmp_path):
    """The issue's crash, model-free: the real distilabel pipeline through the runner's run_pipeline."""
    script = tmp_path / "late_strings.py"
    script.write_text(LATE_STRINGS_RUN)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"rows": 120, "removed": ["cut"], "note": "late", "pipeline_unchanged": True}
