"""The run's output rows on disk: distilabel's write buffer, with column types settled over the
whole run instead of by its first chunk.

distilabel 1.5.3's ``_WriteBuffer`` writes a leaf step's rows to parquet in chunks and takes
the first chunk's inferred schema as the file set's; a later chunk whose column holds what
the first lacked (strings where the first had only ``[]``) cannot be cast back at teardown
(``ArrowNotImplementedError: Unsupported cast from string to null``), after all the work is
done. :class:`ReconcilingWriteBuffer` types every chunk with the declared column types
(:func:`magpie_dl.recipe.schema.column_types`) merged with what every chunk so far held
(:func:`magpie_dl.recipe.schema.merge_types`), and at close brings the files written before a
type widened up to the final schema, so ``create_distiset`` reads one schema back.

A failure there is raised as :class:`~magpie_dl.run.unpublished.NotPublished` once distilabel
has wound down (the rows are in the result store; a rerun publishes them).

This is the one place that reaches into distilabel's write buffer. It changes nothing at
import: :func:`reconciled_leaf_output` puts it on one pipeline, for the length of its run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magpie_dl.recipe.schema import TypeConflict, as_json_text, chunk_type, column_types, merge_types
from magpie_dl.run.unpublished import NotPublished

if TYPE_CHECKING:
    import pyarrow as pa

# What this module relies on in distilabel (checked by reconciled_leaf_output and the tests).
PIPELINE_HOOK = "_setup_write_buffer"
BUFFER_ATTRIBUTES = ("_path", "_buffers", "_buffers_last_file", "_clean_buffer", "_write", "close", "add_batch")

log = logging.getLogger("magpie_dl")


def _buffer_base() -> type:
    from distilabel.pipeline.write_buffer import _WriteBuffer

    return _WriteBuffer


class _Leaf:
    """What the buffer knows of one leaf step's output: its types so far and its files."""

    def __init__(self) -> None:
        self.types: dict[str, pa.DataType] = {}
        self.json_columns: set[str] = set()
        # Each file written, with the schema and JSON-text columns it was written with.
        self.files: list[tuple[Path, pa.Schema, frozenset[str]]] = []

    def settle(self, rows: list[dict[str, Any]], step: str) -> pa.Schema:
        """The schema for the next chunk ``rows``: declared types, merged with every chunk's."""
        import pyarrow as pa

        declared = column_types()
        names = dict.fromkeys(name for row in rows for name in row)
        for name in names:
            if name in self.json_columns:
                continue
            values = [row.get(name) for row in rows]
            try:
                start = self.types.get(name) or declared.get(name) or pa.null()
                self.types[name] = merge_types(start, chunk_type(values))
            except TypeConflict as exc:
                self.json_columns.add(name)
                self.types[name] = pa.string()
                log.warning("%s: column %r holds values of different types (%s); it is kept as JSON text",
                            step, name, exc)
        return pa.schema(list(self.types.items()))

    def table(self, rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
        import pyarrow as pa

        if self.json_columns:
            rows = [{**row, **{c: as_json_text(row[c]) for c in self.json_columns if c in row}} for row in rows]
        return pa.Table.from_pylist(rows, schema=schema)

    def final_schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema(list(self.types.items()))


def conform(table: pa.Table, schema: pa.Schema, newly_json: frozenset[str] | set[str] = frozenset()) -> pa.Table:
    """``table`` in ``schema``: columns it lacks added as nulls, each column cast to its final
    type (``newly_json``: columns turned to JSON text after the table was written)."""
    import pyarrow as pa

    if newly_json:
        rows = table.to_pylist()
        for row in rows:
            for name in newly_json:
                if name in row:
                    row[name] = as_json_text(row[name])
        return pa.Table.from_pylist(rows, schema=schema)
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            # A cast Arrow lacks (a struct gaining fields inside a list): through Python values.
            columns.append(pa.array(column.to_pylist(), type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


@lru_cache(maxsize=1)
def make_buffer_class() -> type:
    """distilabel's ``_WriteBuffer`` with chunk types settled over the run (imported lazily)."""
    base = _buffer_base()

    class ReconcilingWriteBuffer(base):  # type: ignore[misc, valid-type]
        """A leaf step's rows to parquet, typed by the declared types and every chunk so far."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._leaves: dict[str, _Leaf] = {}
            self.failure: Exception | None = None

        def _write(self, step_name: str) -> None:
            import pyarrow.parquet as pq

            rows = self._buffers[step_name]
            leaf = self._leaves.setdefault(step_name, _Leaf())
            schema = leaf.settle(rows, step_name)
            table = leaf.table(rows, schema)
            folder = Path(self._path, step_name)
            folder.mkdir(parents=True, exist_ok=True)
            number = self._buffers_last_file[step_name]
            self._buffers_last_file[step_name] = number + 1
            target = folder / f"{number:05d}.parquet"
            pq.write_table(table, target)
            leaf.files.append((target, schema, frozenset(leaf.json_columns)))
            self._clean_buffer(step_name)

        def close(self) -> None:
            # Raised here, a failure would cut distilabel's teardown short (its queue threads then
            # die with tracebacks of their own): kept, and raised once the run has wound down.
            try:
                self.write_out()
            except Exception as exc:
                self.failure = exc

        def write_out(self) -> None:
            """The rows still buffered, then every earlier file brought up to the final schema."""
            import pyarrow.parquet as pq

            for step_name in self._buffers:
                if self._buffers[step_name]:
                    self._write(step_name)
                leaf = self._leaves.get(step_name)
                if leaf is None:
                    continue
                final = leaf.final_schema()
                for path, schema, json_columns in leaf.files:
                    newly_json = leaf.json_columns - json_columns
                    if schema.equals(final) and not newly_json:
                        continue
                    pq.write_table(conform(pq.read_table(path), final, newly_json), path)

    ReconcilingWriteBuffer.__qualname__ = ReconcilingWriteBuffer.__name__ = "ReconcilingWriteBuffer"
    return ReconcilingWriteBuffer


def check_distilabel_internals(pipeline: Any) -> None:
    """The private names this module uses exist; a clear error if a distilabel release moved them."""
    base = _buffer_base()
    missing = [name for name in BUFFER_ATTRIBUTES if name not in dir(base) and name not in base.__init__.__code__.co_names]
    if not hasattr(pipeline, PIPELINE_HOOK):
        missing.append(f"BasePipeline.{PIPELINE_HOOK}")
    if missing:
        import distilabel

        raise RuntimeError(
            f"distilabel {distilabel.__version__} lacks what magpie_dl's leaf output needs "
            f"({', '.join(missing)}); use distilabel 1.5.3"
        )


@contextmanager
def reconciled_leaf_output(pipeline: Any) -> Iterator[None]:
    """While ``pipeline`` runs, its leaf rows go through :class:`ReconcilingWriteBuffer`.

    Set on this pipeline object alone (its ``_setup_write_buffer``), for the block only:
    distilabel's class and every other pipeline are left as they are.
    """
    check_distilabel_internals(pipeline)
    buffer_class = make_buffer_class()
    original = getattr(pipeline, PIPELINE_HOOK)

    def setup(use_cache: bool = True) -> None:
        original(use_cache)  # distilabel's own (clears old data, logs, builds its buffer)
        plain = pipeline._write_buffer
        pipeline._write_buffer = buffer_class(
            plain._path, set(plain._buffers), steps_cached=getattr(plain, "_steps_cached", None)
        )

    setattr(pipeline, PIPELINE_HOOK, setup)
    try:
        yield
    finally:
        delattr(pipeline, PIPELINE_HOOK)
        failure = getattr(pipeline._write_buffer, "failure", None)
        if failure is not None:
            # Every step finished; its results are in the store, so a rerun publishes them.
            raise NotPublished("writing the run's rows (distilabel's teardown)", failure) from None


__all__ = ["conform", "make_buffer_class", "reconciled_leaf_output"]
