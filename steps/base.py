"""What our steps share: durable results in the output directory, process hygiene, and
the life cycle of the model a step runs."""

from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol

from pydantic import BaseModel, Field, PrivateAttr

from magpie_dl.run.procs import die_with_parent
from magpie_dl.run.progress import RowTally
from magpie_dl.run.store import ResultStore
from magpie_dl.run.streaming import cached_complete

if TYPE_CHECKING:
    from collections.abc import Sequence

    from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec


class StoredResults(BaseModel):
    """Mixin: a step whose expensive calls go through a :class:`ResultStore`.

    Attributes:
        cache_dir: directory of the durable result store; ``None`` stores nothing.

    ``CACHE_VERSION`` is part of every key: bump it when a change to the step alters
    its results, and stored results of the old code are no longer used.
    """

    CACHE_VERSION: ClassVar[str] = "1"

    cache_dir: Optional[str] = Field(default=None, description="Durable result store directory.")

    _store: Optional[ResultStore] = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        # pydantic gives a model with private attributes a model_post_init that does not call
        # super(): listed before distilabel's step class, this mixin's would hide distilabel's
        # (which names the step and adds it to its pipeline). Hand on explicitly.
        super().model_post_init(context)

    def open_store(self) -> None:
        """Call from ``load()``: open the store (if any) and tie this worker to its parent."""
        die_with_parent()
        self._store = ResultStore(self.cache_dir) if self.cache_dir else None

    @property
    def store(self) -> Optional[ResultStore]:
        return self._store

    def report_started(self) -> None:
        """Call when a batch starts: the live display times the step's rate from its first one."""
        self.report_progress(0, 0)

    def report_progress(self, rows: int, tokens: int) -> None:
        """Count finished rows and tokens for the run's live progress display."""
        if self._store is not None:
            self._store.count_progress(self.name, rows, tokens)  # type: ignore[attr-defined]

    def row_tally(self, num_rows: int, row_of: "Sequence[int] | None" = None) -> RowTally:
        """A batch of ``num_rows`` rows counted as they finish (see :class:`~magpie_dl.run.progress.RowTally`)."""
        return RowTally(self.report_progress, num_rows, row_of)


class Loadable(Protocol):
    """A model handle: loaded in a step's ``load()``, freed in its ``unload()``."""

    def load(self) -> None: ...

    def unload(self) -> None: ...


class LLMStep(StoredResults):
    """Mixin: a step that runs one model, with its store and progress counters.

    ``load()`` ties the worker to its parent, opens the store and loads the model;
    ``unload()`` frees it. A step adds only what is its own, after ``super().load()``
    (its family, template, stops). The model is the step's ``llm`` (a ``CompletionLLM``);
    a step around another kind of model (the reward scorer) returns it from
    :meth:`model_to_load`.

    List it before distilabel's step class (``class MyStep(LLMStep, Step)``):
    distilabel's ``load()`` and ``unload()`` do not call ``super()``, so a mixin after it
    would never run.
    """

    if TYPE_CHECKING:
        llm: CompletionLLM  # declared by each step, as its own field

    _model: Optional[Loadable] = PrivateAttr(default=None)

    def model_to_load(self) -> Loadable:
        """The model ``load()`` loads and ``unload()`` frees: the step's ``llm``."""
        return self.llm

    def load(self) -> None:
        super().load()  # type: ignore[misc]  # distilabel's: the step's logger
        self.open_store()
        self._model = self.model_to_load()
        self._model.load()

    def unload(self) -> None:
        if self._model is not None:
            self._model.unload()
            self._model = None
        super().unload()  # type: ignore[misc]

    def complete(
        self, prompts: "list[PromptInput]", specs: "list[SamplingSpec]", tally: Optional[RowTally] = None
    ) -> "list[list[Completion]]":
        """The step's ``llm`` completions of ``prompts``, read from the store where it has them;
        ``tally`` (:meth:`row_tally`) counts the batch's rows as their requests finish."""
        return cached_complete(self.store, self.name, self.CACHE_VERSION, self.llm, prompts, specs, tally)  # type: ignore[attr-defined]

