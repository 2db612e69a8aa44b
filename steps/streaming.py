"""Steps that keep the engine full across batches: a stream under distilabel's batch loop.

A :class:`StreamingStep` completes one batch on its own in ``process()`` (standalone use,
and any pipeline), through two hooks. Run under :func:`magpie_dl.distilabel_compat.streaming`
(the recipes' driver does), its worker instead keeps taking queued batches into one
:class:`~magpie_dl.run.streaming.OrderedBatches` while earlier ones run, up to
``max_in_flight`` sequences, and sends each back complete and in order, through the same hooks.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Optional

from distilabel.mixins.runtime_parameters import RuntimeParameter
from pydantic import Field, PrivateAttr

from magpie_dl import distilabel_compat
from magpie_dl.backends.base import Completion, PromptInput, SamplingSpec
from magpie_dl.run.progress import RowTally
from magpie_dl.run.streaming import DEFAULT_MAX_IN_FLIGHT, OrderedBatches
from magpie_dl.steps.base import LLMStep


class StreamedCompletions(LLMStep):
    """Mixin: an :class:`~steps.base.LLMStep` that sends its completions through a stream on its backend.

    Attributes:
        max_in_flight: sequences (prompts x samples) in flight above which no further
            batch is taken; what a kill can lose at most.
    """

    max_in_flight: RuntimeParameter[int] = Field(
        default=DEFAULT_MAX_IN_FLIGHT,
        ge=1,
        description="Sequences in flight across batches before the step waits for some to finish.",
    )

    _batches: Optional[OrderedBatches] = PrivateAttr(default=None)

    def open_batches(self) -> OrderedBatches:
        """A fresh stream on the step's backend, batches ordered, results stored."""
        llm = self.llm  # type: ignore[attr-defined]
        self._batches = OrderedBatches(
            llm.open_stream(), self.store, self.name, self.CACHE_VERSION, llm.model_name, self.max_in_flight  # type: ignore[attr-defined]
        )
        return self._batches

    def close_batches(self) -> None:
        """Drop what the last stream still runs (a stopped run must not compute the
        batches it had queued ahead before its worker can exit)."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def unload(self) -> None:
        self.close_batches()  # before the engine goes
        super().unload()


class StreamingStep(StreamedCompletions):
    """Mixin for a normal step whose batch is prompts in, completions out, rows back.

    Implement :meth:`completion_requests` and :meth:`rows_from_completions`; then
    :meth:`complete_rows` is the whole of a plain ``process()``, and in a run under
    :func:`magpie_dl.distilabel_compat.streaming` the step's worker runs the same two hooks
    with batches overlapping on one stream.
    """

    STREAMS_BATCHES: ClassVar[bool] = True
    # Set by distilabel_compat.streaming() on the driver's copy; travels with the step to a Ray
    # actor, which did not fork from the driver and installs the loop itself when the step loads.
    _in_streaming_run: bool = PrivateAttr(default=False)

    def load(self) -> None:
        super().load()
        if self._in_streaming_run:
            distilabel_compat.install_streaming_loop()

    @abstractmethod
    def completion_requests(self, rows: list[dict[str, Any]]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        """A batch's requests: ``(context, prompts, specs)``, at most one request per row;
        context goes back to :meth:`rows_from_completions` untouched."""

    @abstractmethod
    def rows_from_completions(
        self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]
    ) -> list[dict[str, Any]]:
        """The batch's output rows from its completions (in request order)."""

    def complete_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One batch, start to end (``process()`` of a step not run by the streaming loop)."""
        self.report_started()
        context, prompts, specs = self.completion_requests(rows)
        return self.rows_from_completions(rows, context, self.complete(prompts, specs, self.batch_tally(rows, prompts)))

    def batch_tally(self, rows: list[dict[str, Any]], prompts: list[PromptInput]) -> RowTally:
        """The live count of a batch: a row is done when its request is (requests are one per
        row at most; rows with none, :meth:`completion_requests` skipped them, at once)."""
        return self.row_tally(len(rows), range(len(prompts)))
