"""Global steps on the columns they read: the rest of each row waits on disk (``magpie_dl.run.set_aside``)."""

# No `from __future__ import annotations`: distilabel reads the evaluated `StepInput` hint.
from typing import TYPE_CHECKING, List, Tuple

from distilabel.steps import GlobalStep, StepInput
from pydantic import Field

from magpie_dl.steps.base import RecipeStep

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class ColumnsRead(RecipeStep):
    """Keeps, of each row, only ``columns`` (those it has): what the global steps after it read.

    Input columns:
        - uuid (str)

    Output columns:
        - none new: each row loses every column not in ``columns``.
    """

    columns: List[str] = Field(description="The columns kept (uuid among them).")

    @property
    def inputs(self) -> "StepColumns":
        return ["uuid"]

    @property
    def outputs(self) -> "StepColumns":
        return []

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        keep = self.columns
        yield [{name: row[name] for name in keep if name in row} for row in inputs]


class SetAside(RecipeStep):
    """A leaf that takes rows whole as they stream: distilabel writes them to disk, and the run's
    rows get their columns back by uuid (:func:`magpie_dl.run.set_aside.run_rows`); those in
    ``sent_columns`` come back from the global steps' output instead.

    Input columns:
        - uuid (str)

    Output columns:
        - none new: the rows as they came.
    """

    sent_columns: List[str] = Field(description="The columns also sent on to the global steps.")

    @property
    def inputs(self) -> "StepColumns":
        return ["uuid"]

    @property
    def outputs(self) -> "StepColumns":
        return []

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield inputs


def set_aside_for(*global_steps: GlobalStep, batch_size: int) -> Tuple[ColumnsRead, SetAside]:
    """The two branches that go before ``global_steps`` (chained, in order): the one that feeds
    them only the columns they read, and the leaf that sets the whole rows aside.

    ``batch_size``: rows per batch into each branch (the step before them makes batches of it).
    """
    # get_inputs(): {column: required}; an optional column is read when the rows have it.
    read = list(dict.fromkeys(["uuid", *(name for step in global_steps for name in step.get_inputs())]))
    return (ColumnsRead(name="columns_read", columns=read, input_batch_size=batch_size),
            SetAside(name="set_aside", sent_columns=read, input_batch_size=batch_size))

