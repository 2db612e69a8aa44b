"""The bases of our steps, one per role: a step needs one of them and its own few lines."""

# No `from __future__ import annotations`: distilabel reads the evaluated `StepInput` hint.

import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Mapping, Optional, Protocol, Sequence, Type, TypeVar, Union

from distilabel.mixins.runtime_parameters import RuntimeParameter, RuntimeParametersMixin
from distilabel.steps import GeneratorStep, GlobalStep, Step, StepInput
from pydantic import BaseModel, Field, PrivateAttr

from magpie_dl import distilabel_compat
from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.chat_llm import LLMNotSupportedError, completer
from magpie_dl.backends.gpus import PlannedDevices
from magpie_dl.run.procs import die_with_parent
from magpie_dl.run.progress import RowTally
from magpie_dl.run.store import ResultStore
from magpie_dl.run.streaming import DEFAULT_MAX_IN_FLIGHT, OrderedBatches, cached_complete

if TYPE_CHECKING:
    from distilabel.typing import StepOutput

StepT = TypeVar("StepT", bound=BaseModel)

# ----------------------------------------------------------------------- built from config


_T = TypeVar("_T")

# ``Optional[RuntimeParameter[X]]`` as distilabel reads it (an optional runtime parameter),
# without the ``Field(default=None)`` that distilabel's alias nests inside the union, which
# pydantic warns about for every class that declares one (the field's own default applies).
OptionalRuntimeParameter = Optional[Annotated[Union[_T, None], distilabel_compat.runtime_parameter_annotation()]]

def config_values(step: Type[BaseModel], section: BaseModel) -> dict[str, Any]:
    """The field values of ``step`` a config ``section`` sets (renamed by ``config_names``; ``None``: skipped)."""
    names: Mapping[str, Optional[str]] = getattr(step, "config_names", {})
    values = {}
    for name in type(section).model_fields:
        field = names.get(name, name)
        if field is not None and field in step.model_fields:
            values[field] = getattr(section, name)
    return values


def from_config(step: Type[StepT], section: BaseModel, **kwargs: Any) -> StepT:
    """The step for a recipe's config ``section``; ``kwargs`` set the rest (and win)."""
    return step(**{**config_values(step, section), **kwargs})


class RecipeStep(Step):
    """A normal step a recipe builds from a config section; ``config_names`` maps names that differ."""

    config_names: ClassVar[Mapping[str, Optional[str]]] = {"batch_size": "input_batch_size"}
    from_config = classmethod(from_config)


class RecipeGlobalStep(GlobalStep):
    """A global step (all rows at once) a recipe builds from a config section."""

    config_names: ClassVar[Mapping[str, Optional[str]]] = RecipeStep.config_names
    from_config = classmethod(from_config)


class RecipeGeneratorStep(GeneratorStep):
    """A generator step a recipe builds from a config section (its ``batch_size`` is its own)."""

    config_names: ClassVar[Mapping[str, Optional[str]]] = {}
    from_config = classmethod(from_config)


# ----------------------------------------------------------------------- model steps


class Loadable(Protocol):
    """A model handle: loaded in a step's ``load()``, freed in its ``unload()``."""

    def load(self) -> None: ...

    def unload(self) -> None: ...


# How often tokens an engine reports as it decodes are counted (a store write each time).
DECODED_EVERY_S = 0.5


class ModelRun:
    """A loaded model step's model, result store and progress counts; it ties the worker's life to the run's."""

    def __init__(self, step_name: str, cache_dir: Optional[str], version: str) -> None:
        die_with_parent()
        self.step_name, self.version = step_name, version
        self.store = ResultStore(cache_dir) if cache_dir else None
        self.model: Optional[Loadable] = None
        self.batches: Optional[OrderedBatches] = None
        # Tokens an engine reported as it decoded them, not yet counted (counted at most
        # every DECODED_EVERY_S: a decoding step is far shorter than a store write).
        self._decoded, self._decoded_at, self._decoded_lock = 0, time.monotonic(), threading.Lock()

    def load(self, model: Loadable) -> None:
        self.model = model
        model.load()
        if isinstance(model, CompletionLLM) and model.decodes_live:
            model.report_decoded_to(self._count_decoded)

    def _count_decoded(self, tokens: int) -> None:
        with self._decoded_lock:
            self._decoded += tokens
            due = time.monotonic() - self._decoded_at >= DECODED_EVERY_S
        if due:
            self._flush_decoded()

    def _take_decoded(self) -> int:
        """The tokens decoded since the last count, now counted."""
        with self._decoded_lock:
            tokens, self._decoded, self._decoded_at = self._decoded, 0, time.monotonic()
        return tokens

    def _flush_decoded(self) -> None:
        tokens = self._take_decoded()
        if tokens and self.store is not None:
            self.store.count_progress(self.step_name, 0, tokens)

    def close(self) -> None:
        """Drop what the stream still runs, then free the model; a second call does nothing."""
        self.close_batches()  # before the engine goes
        self._flush_decoded()  # tokens decoded since the last count
        if self.model is not None:
            if isinstance(self.model, CompletionLLM):
                self.model.report_decoded_to(None)
            self.model.unload()
            self.model = None

    def report_progress(self, rows: int, tokens: int) -> None:
        tokens += self._take_decoded()
        if self.store is not None:
            self.store.count_progress(self.step_name, rows, tokens)

    def row_tally(self, num_rows: int, row_of: Optional[Sequence[int]] = None) -> RowTally:
        return RowTally(self.report_progress, num_rows, row_of)

    def open_batches(self, llm: Any, max_in_flight: int) -> OrderedBatches:
        engine = completer(llm)  # our backend, or a stock distilabel LLM through the adapter
        self.batches = OrderedBatches(
            engine.open_stream(), self.store, self.step_name, self.version, engine.model_name, max_in_flight,
            count_tokens=not getattr(engine, "decodes_live", False),
        )
        return self.batches

    def close_batches(self) -> None:
        if self.batches is not None:
            self.batches.close()
            self.batches = None


def _cache_dir_field() -> Any:
    return Field(default=None, description="Durable result store directory.")


def _max_in_flight_field() -> Any:
    return Field(
        default=DEFAULT_MAX_IN_FLIGHT,
        ge=1,
        description="Sequences in flight across batches before the step waits for some to finish.",
    )


# The LLM's fields only its own generate() path reads: our steps sample with their own knobs.
_GENERATE_ONLY = ("generation_kwargs", "use_offline_batch_generation", "offline_batch_generation_block_until_done")


def check_llm_for_step(step: str, llm: Any) -> None:
    """Refuse, in one line, ``llm.generation_kwargs`` on a step that samples with its own knobs."""
    if getattr(llm, "generation_kwargs", None):
        raise LLMNotSupportedError(
            f"{step} samples with its own temperature, top_p, max_tokens and seed, not llm.generation_kwargs "
            f"({', '.join(sorted(llm.generation_kwargs))}): set the step's fields instead"
        )


def _runtime_parameters_names(self: Any) -> dict[str, Any]:
    """distilabel's names without the llm's generate-only ones (not shown: the step's knobs apply)."""
    names = dict(RuntimeParametersMixin.runtime_parameters_names.fget(self))  # type: ignore[attr-defined]
    if isinstance(names.get("llm"), dict):
        names["llm"] = {k: v for k, v in names["llm"].items() if k not in _GENERATE_ONLY}
    return names


def _runtime_parameters_info(self: Any) -> list[dict[str, Any]]:
    """distilabel's info without the llm's generate-only parameters (see :func:`_runtime_parameters_names`)."""
    info = RuntimeParametersMixin.get_runtime_parameters_info(self)
    for entry in info:
        if entry.get("name") == "llm" and isinstance(entry.get("runtime_parameters_info"), list):
            entry["runtime_parameters_info"] = [
                p for p in entry["runtime_parameters_info"] if p.get("name") not in _GENERATE_ONLY
            ]
    return info


class ModelStep(RecipeStep):
    """A step that runs one model (its ``llm``, or :meth:`model_to_load`), with durable results and live progress.

    Bump ``CACHE_VERSION``, part of every stored key, when a change alters the step's results.

    Attributes:
        cache_dir: directory of the durable result store; ``None`` stores nothing.
    """

    CACHE_VERSION: ClassVar[str] = "1"

    if TYPE_CHECKING:
        llm: CompletionLLM  # declared by each step, as its own field

    cache_dir: Optional[str] = _cache_dir_field()

    _run: Optional[ModelRun] = PrivateAttr(default=None)

    runtime_parameters_names = property(_runtime_parameters_names)  # type: ignore[assignment]
    get_runtime_parameters_info = _runtime_parameters_info

    def model_to_load(self) -> Loadable:
        """The model ``load()`` loads and ``unload()`` frees: the step's ``llm``."""
        return self.llm

    def load(self) -> None:
        super().load()
        check_llm_for_step(type(self).__name__, getattr(self, "llm", None))
        self._run = ModelRun(self.name, self.cache_dir, self.CACHE_VERSION)  # type: ignore[arg-type]
        self._run.load(self.model_to_load())

    def unload(self) -> None:
        if self._run is not None:
            self._run.close()
        super().unload()

    @property
    def store(self) -> Optional[ResultStore]:
        return self._run.store if self._run else None

    def report_started(self) -> None:
        """Call when a batch starts: the live display times the step's rate from its first one."""
        self.report_progress(0, 0)

    def report_progress(self, rows: int, tokens: int) -> None:
        """Count finished rows and tokens for the run's live progress display."""
        if self._run is not None:
            self._run.report_progress(rows, tokens)

    def row_tally(self, num_rows: int, row_of: Optional[Sequence[int]] = None) -> RowTally:
        """A batch of ``num_rows`` rows counted as they finish (see :class:`~magpie_dl.run.progress.RowTally`)."""
        return RowTally(self.report_progress, num_rows, row_of)

    def complete(
        self, prompts: list[PromptInput], specs: list[SamplingSpec], tally: Optional[RowTally] = None
    ) -> list[list[Completion]]:
        """The ``llm``'s completions of ``prompts``, from the store where it has them; ``tally`` counts rows."""
        engine = completer(self.llm)  # our backend, or a stock distilabel LLM through the adapter
        return cached_complete(self.store, self.name, self.CACHE_VERSION, engine, prompts, specs, tally)  # type: ignore[arg-type]


class DevicePlacedStep(ModelStep, PlannedDevices):
    """A model step that puts its own model where the run's plan placed its replica (:meth:`pin_planned_devices`);
    a ``CudaDevicePlacementMixin`` so that distilabel names the replica, not for its ``load()`` placement.
    """


class StreamingStep(ModelStep):
    """A model step whose batch is prompts in, completions out, rows back: implement
    :meth:`completion_requests` and :meth:`rows_from_completions`. Batches overlap on one stream
    in a run under :func:`magpie_dl.distilabel_compat.streaming`.

    Runtime parameters:
        - `max_in_flight`: sequences in flight above which no batch is taken (what a kill can lose).
    """

    max_in_flight: RuntimeParameter[int] = _max_in_flight_field()

    STREAMS_BATCHES: ClassVar[bool] = True
    # Set by distilabel_compat.streaming() on the driver's copy; travels with the step to a Ray
    # actor, which did not fork from the driver and installs the loop itself when the step loads.
    _in_streaming_run: bool = PrivateAttr(default=False)

    def load(self) -> None:
        super().load()
        if self._in_streaming_run:
            distilabel_compat.install_streaming_loop()

    def completion_requests(self, rows: list[dict[str, Any]]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        """A batch's ``(context, prompts, specs)``, at most one request per row."""
        raise NotImplementedError

    def rows_from_completions(
        self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]
    ) -> list[dict[str, Any]]:
        """The batch's output rows from its completions (in request order) and its ``context``."""
        raise NotImplementedError

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield self.complete_rows(inputs)

    def complete_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One batch, start to end (``process()`` when not run by the streaming loop)."""
        self.report_started()
        context, prompts, specs = self.completion_requests(rows)
        return self.rows_from_completions(rows, context, self.complete(prompts, specs, self.batch_tally(rows, prompts)))

    def batch_tally(self, rows: list[dict[str, Any]], prompts: list[PromptInput]) -> RowTally:
        """The live count of a batch: a row is done with its request (at once if it has none)."""
        return self.row_tally(len(rows), range(len(prompts)))

    def open_batches(self) -> OrderedBatches:
        """A fresh stream on the step's backend, batches ordered, results stored."""
        assert self._run is not None, "load() was not called"
        return self._run.open_batches(self.llm, self.max_in_flight)

    def close_batches(self) -> None:
        """Drop what the last stream still runs: a stopped run must not compute the batches it queued ahead."""
        if self._run is not None:
            self._run.close_batches()


class ModelGeneratorStep(RecipeGeneratorStep):
    """A generator step that streams its model's completions; ``cache_dir`` as in :class:`ModelStep`,
    ``max_in_flight`` as in :class:`StreamingStep`."""

    CACHE_VERSION: ClassVar[str] = "1"

    if TYPE_CHECKING:
        llm: CompletionLLM  # declared by each step, as its own field

    cache_dir: Optional[str] = _cache_dir_field()
    max_in_flight: RuntimeParameter[int] = _max_in_flight_field()

    _run: Optional[ModelRun] = PrivateAttr(default=None)

    runtime_parameters_names = property(_runtime_parameters_names)  # type: ignore[assignment]
    get_runtime_parameters_info = _runtime_parameters_info

    def load(self) -> None:
        super().load()
        check_llm_for_step(type(self).__name__, self.llm)
        self._run = ModelRun(self.name, self.cache_dir, self.CACHE_VERSION)  # type: ignore[arg-type]
        self._run.load(self.llm)

    def unload(self) -> None:
        if self._run is not None:
            self._run.close()
        super().unload()

    @property
    def run(self) -> ModelRun:
        """The loaded step's :class:`ModelRun`: its store, progress counts and stream."""
        assert self._run is not None, "load() was not called"
        return self._run

    def report_progress(self, rows: int, tokens: int) -> None:
        """Count finished rows and tokens for the run's live progress display (which follows
        the steps that have this method)."""
        self.run.report_progress(rows, tokens)

    def open_batches(self) -> OrderedBatches:
        """A fresh stream on the step's backend, batches ordered, results stored."""
        return self.run.open_batches(self.llm, self.max_in_flight)
