"""Rows set aside around global steps, and joined back by uuid when the run's rows are read.

A global step (near-duplicates, selection) receives every row of the run at once, and
distilabel's driver holds them all (as Python dicts) to build that one batch, then the step's
output rows again: at 300K curation rows of 10-13 KB each (instruct responses, configs, tag
errors) that was 17 GB. So before the global steps the graph branches
(:func:`magpie_dl.steps.set_aside.set_aside_for`): one branch keeps only the columns the global
steps read (``uuid`` and about ten more, ~1.3 KB a row) and feeds them; the other is a leaf
that takes the whole rows, which distilabel's write buffer puts on disk as they stream, 50 at
a time. When the run's rows are read, :func:`run_rows` joins that leaf's columns back into
the global steps' output by uuid, a batch at a time from memory-mapped Arrow, so the release
reads the same rows as before.

Resume needs nothing of its own: both leaves live in distilabel's cache of this run, and a
rerun runs the whole graph again from the result store. A run whose rows did not all reach
both leaves is a run that did not finish (:class:`~magpie_dl.run.stopping.RunStopped`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magpie_dl.release.export import BATCH_ROWS, discard_loaded_copy

if TYPE_CHECKING:
    from datasets import Dataset

# The attribute that marks a leaf step holding rows set aside: the columns its rows also sent
# on to the global steps (they come back from the global steps' output, as those left them).
SENT_COLUMNS = "sent_columns"


class MissingSetAside(LookupError):
    """Rows reached the end of the run without their set-aside columns (a run that did not finish)."""

    def __init__(self, missing: int) -> None:
        super().__init__(f"{missing} rows have no set-aside columns")
        self.missing = missing


def set_aside_leaves(steps: Mapping[str, Any]) -> dict[str, list[str]]:
    """The leaf steps among ``steps`` (name -> step) that hold rows set aside, with the columns
    they sent on."""
    return {name: list(getattr(step, SENT_COLUMNS)) for name, step in steps.items()
            if getattr(step, SENT_COLUMNS, None) is not None}


def run_rows(leaves: Mapping[str, Dataset], leaf_names: Sequence[str], aside: Mapping[str, list[str]]) -> Dataset | None:
    """The run's rows from its leaves' datasets (``leaves``: leaf name -> rows, as distilabel
    loaded them; ``"default"`` when there is one); ``None`` when a leaf has no rows, or rows
    lack their set-aside part (the run stopped before its rows reached both).

    With no leaf set aside there is one leaf, and its rows are the run's. Otherwise the other
    leaf's rows are the run's, with the set-aside leaf's columns joined back by uuid
    (:func:`join_set_aside`), and the set-aside leaf's loaded copy deleted.
    """
    if not aside:
        return leaves.get("default")
    [main] = [name for name in leaf_names if name not in aside]
    [(name, sent)] = aside.items()  # one set-aside leaf: the recipe's one stretch of global steps
    rows = None
    # distilabel names a lone leaf "default": the other had no rows, the run did not finish.
    if main in leaves and name in leaves:
        try:
            rows = join_set_aside(leaves[main], leaves[name], sent)
        except MissingSetAside:
            pass
    for part in (leaves.values() if rows is None else [leaves[name]]):
        discard_loaded_copy(part)
    return rows


def joined_columns(rows: list[str], aside: list[str], sent: Sequence[str]) -> list[tuple[str, bool]]:
    """The joined rows' columns in order, each with whether it comes from ``rows`` (the global
    steps' output) rather than ``aside`` (the whole rows as they were before the global steps).

    The order is the whole rows' (a column the global steps dropped stays out), then the
    columns the global steps added: the order the rows had when they went through whole.
    """
    sent_set, have = set(sent), set(rows)
    columns = [(name, name in sent_set) for name in aside if name not in sent_set or name in have]
    seen = set(aside)
    return columns + [(name, True) for name in rows if name not in seen]


def join_set_aside(rows: Dataset, aside: Dataset, sent: Sequence[str]) -> Dataset:
    """``rows`` (the global steps' output: the ``sent`` columns and what the steps added) with
    the other columns of ``aside`` joined back by uuid, in ``rows``' order; written to an Arrow
    file beside ``rows``' loaded copy (so :func:`discard_loaded_copy` of the result deletes
    both), ``BATCH_ROWS`` rows in memory at a time. Raises :class:`MissingSetAside` when rows
    have no set-aside row.
    """
    from datasets import Features

    columns = joined_columns(rows.column_names, aside.column_names, sent)
    from_aside = [name for name, from_rows in columns if not from_rows]
    position = {uuid: i for i, uuid in enumerate(aside.data.column("uuid").to_pylist())}
    missing = sum(uuid not in position for uuid in rows.data.column("uuid").to_pylist())
    if missing:
        raise MissingSetAside(missing)
    aside_part = aside.select_columns(from_aside)

    def join(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        taken = aside_part[[position[uuid] for uuid in batch["uuid"]]]
        return {name: (batch if from_rows else taken)[name] for name, from_rows in columns}

    features = Features({name: (rows.features if from_rows else aside.features)[name] for name, from_rows in columns})
    folder = Path(rows.cache_files[0]["filename"]).parent
    return rows.map(
        join, batched=True, batch_size=BATCH_ROWS, writer_batch_size=BATCH_ROWS, features=features,
        remove_columns=rows.column_names, cache_file_name=str(folder / f"joined-{os.getpid()}.arrow"),
        load_from_cache_file=False,
    )


__all__ = ["MissingSetAside", "SENT_COLUMNS", "join_set_aside", "joined_columns", "run_rows", "set_aside_leaves"]
