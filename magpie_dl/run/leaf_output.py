"""The run's output rows on disk: distilabel's write buffer, with column types settled over the
whole run instead of by its first chunk.

distilabel 1.5.3's ``_WriteBuffer`` writes a leaf step's rows to parquet in chunks and takes
the first chunk's inferred schema as the file set's; a later chunk whose column holds what
the first lacked (strings where the first had only ``[]``) cannot be cast back at teardown
(``ArrowNotImplementedError: Unsupported cast from string to null``), after all the work is
done. :class:`LeafFiles` types every chunk with the declared column types
(:func:`magpie_dl.recipe.schema.column_types`) merged with what every chunk so far held
(:func:`magpie_dl.recipe.schema.merge_types`), and at close brings the files written before a
type widened up to the final schema, so ``create_distiset`` reads one schema back.

A failure there is raised as :class:`~magpie_dl.run.unpublished.NotPublished` once distilabel
has wound down (the rows are in the result store; a rerun publishes them).

:func:`reconciled_leaf_output` puts it on one pipeline, for the length of its run, through
:func:`magpie_dl.distilabel_compat.leaf_output`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magpie_dl import distilabel_compat
from magpie_dl.recipe.schema import TypeConflict, as_json_text, chunk_type, column_types, merge_types
from magpie_dl.run.unpublished import NotPublished

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("magpie_dl")


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


class LeafFiles(distilabel_compat.LeafWriter):
    """The leaf steps' parquet files, each chunk typed by the declared types and every chunk so far."""

    def __init__(self) -> None:
        self._leaves: dict[str, _Leaf] = {}
        self.failure: Exception | None = None

    def write(self, step_name: str, rows: list[dict[str, Any]], path: Path) -> None:
        import pyarrow.parquet as pq

        leaf = self._leaves.setdefault(step_name, _Leaf())
        schema = leaf.settle(rows, step_name)
        pq.write_table(leaf.table(rows, schema), path)
        leaf.files.append((path, schema, frozenset(leaf.json_columns)))

    def finish(self) -> None:
        """Every file written before a type widened brought up to its step's final schema."""
        import pyarrow.parquet as pq

        for leaf in self._leaves.values():
            final = leaf.final_schema()
            for path, schema, json_columns in leaf.files:
                newly_json = leaf.json_columns - json_columns
                if schema.equals(final) and not newly_json:
                    continue
                pq.write_table(conform(pq.read_table(path), final, newly_json), path)


@contextmanager
def reconciled_leaf_output(pipeline: Any) -> Iterator[None]:
    """While ``pipeline`` runs, its leaf rows are written by :class:`LeafFiles`; a failure
    there is raised as :class:`NotPublished` once distilabel has wound down."""
    with distilabel_compat.leaf_output(pipeline, LeafFiles):
        yield
    failure = distilabel_compat.leaf_output_failure(pipeline)
    if failure is not None:
        # Every step finished; its results are in the store, so a rerun publishes them.
        raise NotPublished("writing the run's rows (distilabel's teardown)", failure) from None


__all__ = ["LeafFiles", "conform", "reconciled_leaf_output"]
