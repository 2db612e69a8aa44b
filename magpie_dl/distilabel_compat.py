"""distilabel's private internals, behind one door.

distilabel 1.5.3 is pinned and no longer maintained; a few things a run at scale needs are
only reachable through its private parts. Every such use is in this module, and nothing here
happens on import:

- The recipe driver, around ``pipeline.run``, puts our hooks on that one pipeline object for
  the length of its run: :func:`patched` (streaming batches through a step, no per-batch JSON
  copies), :func:`leaf_output` (leaf columns typed over the whole run), :func:`sigint_setup`
  (our stop-signal handling), :func:`install_failure_hooks` (failures brought back from the
  workers); :func:`stop_replicas_at_stage_end` for staged placements.
- :func:`streaming` is the same for a user's own pipeline that holds our streaming steps.
- The worker side (the loop a streaming step runs in, the failure hooks) is installed on
  ``_StepWrapper`` in the process that forks the workers, and by a streaming step's
  ``load()`` in a Ray actor; it changes nothing for a step that is not ours.

:func:`check` compares the installed distilabel with :data:`SUPPORTED` and checks that every
name in :data:`PRIVATE_NAMES` still exists, so a moved name is one line, not a traceback
deep in a run. ``tests/test_distilabel_compat.py`` checks the same names and signatures,
and that no other module names distilabel's private parts.
"""

from __future__ import annotations

import inspect
import logging
import math
import multiprocessing
import queue
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from distilabel.pipeline.batch import _Batch
    from distilabel.pipeline.step_wrapper import _StepWrapper
    from distilabel.steps.base import _Step

    AnyStep = _Step  # any distilabel step: normal, generator or global

SUPPORTED = "1.5.3"

# Every private name used here: (module, class or None, name, parameters of a method or None).
PRIVATE_NAMES: tuple[tuple[str, Optional[str], str, Optional[tuple[str, ...]]], ...] = (
    ("distilabel.pipeline.step_wrapper", None, "_StepWrapper", None),
    ("distilabel.pipeline.step_wrapper", None, "_StepWrapperException", None),
    ("distilabel.pipeline.step_wrapper", "_StepWrapper", "run", ("self",)),
    ("distilabel.pipeline.step_wrapper", "_StepWrapper", "_non_generator_process_loop", ("self",)),
    ("distilabel.pipeline.step_wrapper", "_StepWrapper", "_impute_step_outputs", ("self", "batch")),
    ("distilabel.pipeline.step_wrapper", "_StepWrapper", "_send_batch", ("self", "batch")),
    ("distilabel.pipeline.base", "BasePipeline", "_manage_batch_flow", ("self", "batch")),
    ("distilabel.pipeline.base", "BasePipeline", "_request_initial_batches", ("self",)),
    ("distilabel.pipeline.base", "BasePipeline", "_notify_steps_to_stop", ("self",)),
    ("distilabel.pipeline.base", "BasePipeline", "_request_batch_from_generator", ("self", "step_name")),
    ("distilabel.pipeline.base", "BasePipeline", "_get_step_from_batch", ("self", "batch")),
    ("distilabel.pipeline.base", "BasePipeline", "_register_batch", ("self", "batch")),
    ("distilabel.pipeline.base", "BasePipeline", "_setup_write_buffer", ("self", "use_cache")),
    ("distilabel.pipeline.base", "BasePipeline", "_handle_keyboard_interrupt", ("self",)),
    ("distilabel.pipeline.base", "BasePipeline", "_stop", ("self",)),
    ("distilabel.pipeline.base", "BasePipeline", "_wait_current_stage_to_finish", ("self",)),
    ("distilabel.pipeline.base", "BasePipeline", "_steps_to_be_loaded_in_stage", ("self", "stage")),
    ("distilabel.pipeline.base", "BasePipeline", "_is_step_running", ("self", "step_name")),
    ("distilabel.pipeline.base", "BasePipeline", "_send_last_batch_flag_to_step", ("self", "step_name")),
    ("distilabel.pipeline.base", "BasePipeline", "_teardown", ("self",)),
    ("distilabel.pipeline.batch_manager", None, "_BatchManager", None),
    ("distilabel.pipeline.batch_manager", "_BatchManager", "register_batch", ("self", "batch", "steps_data_path")),
    ("distilabel.pipeline.write_buffer", None, "_WriteBuffer", None),
    ("distilabel.pipeline.write_buffer", "_WriteBuffer", "_write", ("self", "step_name")),
    ("distilabel.pipeline.write_buffer", "_WriteBuffer", "_clean_buffer", ("self", "step_name")),
    ("distilabel.pipeline.write_buffer", "_WriteBuffer", "close", ("self",)),
    ("distilabel.steps.base", "Step", "_apply_input_mappings", ("self", "inputs")),
    ("distilabel.steps.base", "Step", "_apply_mappings_and_restore_overriden", ("self", "row", "overriden")),
    ("distilabel.mixins.runtime_parameters", None, "_RUNTIME_PARAMETER_ANNOTATION", None),
)
# Instance attributes (set in __init__ or at run time, so only a run shows them): the
# pipeline's _batch_manager, _write_buffer, _cache_dir, _stop_called, _current_stage; the
# batch manager's _received_batch_seq_nos; the write buffer's _path, _buffers,
# _buffers_last_file, _steps_cached; the wrapper's input_queue, replica; an LLM's
# _desired_num_gpus and _llm_identifier (CudaDevicePlacementMixin). The tests run them.

log = logging.getLogger("magpie_dl")


class DistilabelMismatch(RuntimeError):
    """The installed distilabel is not the one magpie_dl's run machinery was written against."""


def check() -> None:
    """Raise :class:`DistilabelMismatch` (one line, what to do) unless distilabel is the
    supported release and has every private name this module uses."""
    import importlib

    import distilabel

    version = getattr(distilabel, "__version__", "?")
    missing = []
    for module, owner, name, params in PRIVATE_NAMES:
        holder: Any = importlib.import_module(module)
        if owner is not None:
            holder = getattr(holder, owner, None)
        found = getattr(holder, name, None) if holder is not None else None
        if found is None:
            missing.append(f"{owner or module}.{name}")
        elif params is not None and tuple(inspect.signature(found).parameters)[: len(params)] != params:
            missing.append(f"{owner}.{name}{params}")
    if version != SUPPORTED or missing:
        what = f" (missing: {', '.join(missing)})" if missing else ""
        raise DistilabelMismatch(
            f"magpie_dl needs distilabel=={SUPPORTED}, found {version}{what}: pip install 'distilabel=={SUPPORTED}'"
        )


# ---------------------------------------------------------------------------------------
# A run: every hook on one pipeline object, for the length of its run.


@contextmanager
def patched(pipeline: Any) -> Iterator[None]:
    """While ``pipeline`` runs: its streaming steps stream (:func:`streaming`), and the
    batches its steps send back are registered without distilabel's JSON copy of each."""
    check()
    with streaming(pipeline), _on(pipeline, "_register_batch", _registering_without_copy(pipeline)):
        yield


@contextmanager
def sigint_setup(pipeline: Any, install: Callable[[Callable[[], None]], Any]) -> Iterator[None]:
    """Where distilabel would install its SIGINT handler in ``pipeline``'s run (once its workers
    exist), ``install(gentle_stop)`` is called instead and returns the handler to keep;
    ``gentle_stop()`` is the pipeline's own stop."""
    with _on(pipeline, "_handle_keyboard_interrupt", lambda: install(pipeline._stop)):
        yield


@contextmanager
def _on(pipeline: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    """``pipeline.<name>`` is ``replacement`` for the block: this object only, not its class."""
    setattr(pipeline, name, replacement)
    try:
        yield
    finally:
        pipeline.__dict__.pop(name, None)


def _registering_without_copy(pipeline: Any) -> Callable[[Any], None]:
    """distilabel writes every batch a step sends back as JSON under ``steps_data`` for its own
    cache (``use_cache=True``), which our runs never read (the result store resumes them):
    several copies of the whole dataset by the end of a run. Registered without the copy."""

    def register(batch: Any) -> None:
        pipeline._batch_manager.register_batch(batch)  # no steps_data_path: nothing written

    return register


def run_cache_dir(pipeline: Any) -> Path:
    """The directory of distilabel's cache for this pipeline's runs."""
    from distilabel.constants import PIPELINES_CACHE_DIR

    return Path(getattr(pipeline, "_cache_dir", PIPELINES_CACHE_DIR)).resolve()


def in_teardown(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in distilabel's teardown (after its steps ran), by its traceback."""
    return any(frame.name == "_teardown" for frame in traceback.extract_tb(exc.__traceback__))


def stop_replicas_at_stage_end(pipeline: Any) -> None:
    """Work around a distilabel 1.5 hang: replicated steps at the end of a load stage.

    distilabel stops a step's replicas when the step's successor sends its last batch.
    The replicas of a stage's last step (``responses`` staged alone, ``judge_tags``...)
    have their successor in the next stage, so every replica but the one that got the
    last batch waits for input forever, and the pipeline spins waiting for the stage
    to unload. Once a stage's last batches are in, nothing in it has work left: tell
    the replicas still running to stop (each ends after the batch it is on).
    """
    wait_for_stage = pipeline._wait_current_stage_to_finish

    def stop_then_wait() -> None:
        for name in pipeline._steps_to_be_loaded_in_stage(pipeline._current_stage):
            if pipeline._is_step_running(name):
                pipeline._send_last_batch_flag_to_step(name)
        wait_for_stage()

    pipeline._wait_current_stage_to_finish = stop_then_wait


# ---------------------------------------------------------------------------------------
# Models: what distilabel's device placement knows of an LLM.


def reserved_gpus(llm: Any) -> int:
    """GPUs distilabel's device placement reserves for ``llm`` in its step."""
    return llm._desired_num_gpus


def replica_identifier(llm: Any) -> str:
    """``<step>-replica-<N>``: the name distilabel's local placement gives ``llm``'s replica."""
    return llm._llm_identifier or ""


def runtime_parameter_annotation() -> Any:
    """The marker distilabel puts in a ``RuntimeParameter[T]`` field's annotation."""
    from distilabel.mixins.runtime_parameters import _RUNTIME_PARAMETER_ANNOTATION

    return _RUNTIME_PARAMETER_ANNOTATION


# ---------------------------------------------------------------------------------------
# Failures inside workers.

# distilabel's log lines about a failure, which the failure hooks report better themselves.
FAILURE_LOG_LINES = (
    "❌ Failed to load step",
    "❌ Failed with an unhandled exception",
    "❌ Failed to load all the steps",
    "⚠️ Processing batch",
    "Subprocess traceback",
    "An error occurred in global step",
    "✋ An error occurred when running global step",
)


class WorkerFailureHooks:
    """What the run wants to know of failures inside step workers (:func:`install_failure_hooks`)."""

    def failed(self, step_name: str, phase: str, exc: BaseException) -> None:
        """A step failed: ``phase`` is ``"run"``, ``"load"`` or ``"process"``."""

    def batch_failed(self, step: Any, batch_seq_no: int, exc: BaseException) -> None:
        """A normal step failed on one batch (its outputs are imputed with ``None``)."""

    def describe(self, exc: BaseException) -> str:
        """The one line that stands in for ``exc`` when it goes back to the driver."""
        return f"{type(exc).__name__}: {exc}"

    def scrub(self, text: str) -> str:
        """``text`` with secrets masked."""
        return text


_failure_hooks: WorkerFailureHooks | None = None


def install_failure_hooks(hooks: WorkerFailureHooks) -> None:
    """Wrap distilabel's step wrapper (workers forked later inherit it) so ``hooks`` hear of
    every failure, and a load failure goes back to the driver as something that pickles
    (the real step holds a model or store that does not)."""
    global _failure_hooks
    from distilabel.pipeline.step_wrapper import _StepWrapper

    first = _failure_hooks is None
    _failure_hooks = hooks
    if not first:
        return
    original_run = _StepWrapper.run
    original_impute = _StepWrapper._impute_step_outputs

    def run(self: _StepWrapper) -> str:
        try:
            return original_run(self)
        except Exception as exc:
            raise _reported(self, exc) from None

    def impute(self: _StepWrapper, batch: Any) -> list[dict[str, Any]]:
        # distilabel calls this inside its `except` around a failed batch of a normal step:
        # the exception being handled is the batch's failure.
        failure = sys.exc_info()[1]
        if failure is not None and _failure_hooks is not None:
            _failure_hooks.batch_failed(self.step, batch.seq_no, failure)
        return original_impute(self, batch)

    _StepWrapper.run = run  # type: ignore[method-assign]
    _StepWrapper._impute_step_outputs = impute  # type: ignore[method-assign]


def _reported(wrapper: Any, exc: Exception) -> Exception:
    """Tell the hooks; what to send back to distilabel (it must pickle)."""
    from distilabel.exceptions import DistilabelOfflineBatchGenerationNotFinishedException
    from distilabel.pipeline.step_wrapper import _StepWrapperException

    hooks = _failure_hooks or WorkerFailureHooks()
    step = wrapper.step
    if not isinstance(exc, _StepWrapperException):
        hooks.failed(step.name, "run", exc)
        return RuntimeError(hooks.describe(exc))
    cause = exc.subprocess_exception
    if isinstance(cause, DistilabelOfflineBatchGenerationNotFinishedException):
        return exc  # distilabel's own resume signal, not a failure
    hooks.failed(step.name, "load" if exc.is_load_error else "process", cause)
    # distilabel's error callback only reads these two attributes of the step.
    stand_in = types.SimpleNamespace(name=step.name, is_global=step.is_global)
    line = hooks.describe(cause)
    sent = _StepWrapperException(line, stand_in, exc.code, RuntimeError(line))  # type: ignore[arg-type]
    sent.formatted_traceback = hooks.scrub(exc.formatted_traceback)
    return sent


# ---------------------------------------------------------------------------------------
# Leaf output: distilabel's write buffer with our writer behind it.


class LeafWriter:
    """Writes a leaf step's rows (see :mod:`magpie_dl.run.leaf_output`)."""

    def write(self, step_name: str, rows: list[dict[str, Any]], path: Path) -> None:
        """Write ``rows`` as the parquet file ``path``."""
        raise NotImplementedError

    def finish(self) -> None:
        """After the last chunk: bring earlier files up to the final schema."""

    failure: Exception | None = None


@lru_cache(maxsize=1)
def _buffer_class() -> type:
    from distilabel.pipeline.write_buffer import _WriteBuffer

    class WriteBuffer(_WriteBuffer):  # type: ignore[misc, valid-type]
        """distilabel's buffer, its chunks written by a :class:`LeafWriter`."""

        writer: LeafWriter

        def _write(self, step_name: str) -> None:
            folder = Path(self._path, step_name)
            folder.mkdir(parents=True, exist_ok=True)
            number = self._buffers_last_file[step_name]
            self._buffers_last_file[step_name] = number + 1
            self.writer.write(step_name, self._buffers[step_name], folder / f"{number:05d}.parquet")
            self._clean_buffer(step_name)

        def close(self) -> None:
            # Raised here, a failure would cut distilabel's teardown short (its queue threads
            # then die with tracebacks of their own): kept for the caller, after the run.
            try:
                for step_name in self._buffers:
                    if self._buffers[step_name]:
                        self._write(step_name)
                self.writer.finish()
            except Exception as exc:
                self.writer.failure = exc

    return WriteBuffer


@contextmanager
def leaf_output(pipeline: Any, make_writer: Callable[[], LeafWriter]) -> Iterator[None]:
    """While ``pipeline`` runs, its leaf steps' rows are written by ``make_writer()``; a failure
    closing them is kept (:func:`leaf_output_failure`), not raised inside distilabel's teardown."""
    original = pipeline._setup_write_buffer

    def setup(use_cache: bool = True) -> None:
        original(use_cache)  # distilabel's own (clears old data, logs, builds its buffer)
        plain = pipeline._write_buffer
        buffer = _buffer_class()(plain._path, set(plain._buffers), steps_cached=getattr(plain, "_steps_cached", None))
        buffer.writer = make_writer()
        pipeline._write_buffer = buffer

    with _on(pipeline, "_setup_write_buffer", setup):
        yield


def leaf_output_failure(pipeline: Any) -> Exception | None:
    """The failure :class:`LeafWriter` met closing ``pipeline``'s output, if any."""
    writer = getattr(getattr(pipeline, "_write_buffer", None), "writer", None)
    return getattr(writer, "failure", None)


# ---------------------------------------------------------------------------------------
# Streaming: batches overlapping on one stream in a step's worker.
#
# distilabel's worker loop takes one batch, runs ``process()`` on it, sends the result and
# only then looks at the next batch, although the pipeline has usually queued it already;
# with long-tailed generation lengths the engine idles through every batch's tail. A step
# with ``STREAMS_BATCHES`` (``magpie_dl.steps.base.StreamingStep``) runs in
# :func:`_streaming_loop` instead: it keeps taking queued batches into one stream while
# earlier ones run and sends each batch as distilabel would (same batch object, ``seq_no``
# and ``last_batch``), complete and in the order received. A generator feeding such a step
# is asked for its next batch as soon as it delivers one, while the step has room ahead
# (:func:`run_ahead_limit`).

# How often a busy loop looks for newly queued batches (a queue read is an IPC round trip).
_PULL_EVERY_S = 0.1
# How long one poll of the stream may wait for a finished request.
_POLL_S = 0.05
# Batches a streaming step may have waiting beyond what its streams can take.
_QUEUED_AHEAD = 2

# Set by the driver when a run is stopped (a signal; not at its normal end) and seen by
# the streaming loops of the workers it forked: distilabel's own stop marker queues behind
# every batch already sent, which a full stream would finish first. Made before the
# workers fork, so they share it; a Ray actor has its own, never set, and stops on the marker.
_run_stopped: Any = None


def streams_batches(step: Any) -> bool:
    """Whether ``step`` can run in the streaming loop."""
    return bool(getattr(step, "STREAMS_BATCHES", False)) and not step.is_global


def install_streaming_loop() -> None:
    """Streaming steps run in :func:`_streaming_loop` (every other step keeps distilabel's
    loop). Called in the process that forks the workers, before it does (their loops are
    then ours), and by a streaming step's ``load()`` inside a Ray actor."""
    global _run_stopped
    from distilabel.pipeline.step_wrapper import _StepWrapper

    if _run_stopped is None:
        _run_stopped = multiprocessing.Event()
    original_loop = _StepWrapper._non_generator_process_loop
    if getattr(original_loop, "streams", False):
        return

    def loop(self: _StepWrapper) -> None:
        # Only a step of a run under streaming(): the flag travels with the step to its worker.
        if streams_batches(self.step) and getattr(self.step, "_in_streaming_run", False):
            return _streaming_loop(self)
        return original_loop(self)

    loop.streams = True  # type: ignore[attr-defined]
    _StepWrapper._non_generator_process_loop = loop  # type: ignore[method-assign]


@contextmanager
def streaming(pipeline: Any) -> Iterator[None]:
    """Around ``pipeline.run``: its streaming steps keep their engine full across batches.

    For a pipeline of your own that holds our streaming steps (``MagpieQueries``,
    ``MultiResponseGeneration``)::

        with streaming(pipeline):
            distiset = pipeline.run()

    Without it those steps run a batch at a time, as any distilabel step does.
    """
    check()
    install_streaming_loop()
    for name in pipeline.dag:
        step = pipeline.dag.get_step(name)["step"]
        if streams_batches(step):
            step._in_streaming_run = True  # our step's own flag: its load() in a Ray actor installs the loop
    original_flow = pipeline._manage_batch_flow
    original_start = pipeline._request_initial_batches
    original_notify = pipeline._notify_steps_to_stop

    def manage_batch_flow(batch: _Batch) -> None:
        step = pipeline._get_step_from_batch(batch)
        fed = _streaming_successors(pipeline, batch.step_name) if step.is_generator and not batch.last_batch else []
        if not fed:
            return original_flow(batch)
        asked = pipeline._batch_manager.get_last_batch_sent(batch.step_name)
        original_flow(batch)
        if pipeline._batch_manager.get_last_batch_sent(batch.step_name) is asked and all(  # distilabel asked for none
            _has_room_ahead(pipeline, successor) for successor in fed
        ):
            pipeline._request_batch_from_generator(batch.step_name)

    def request_initial_batches() -> None:
        _run_stopped.clear()  # before any batch flows: no loop is busy yet
        original_start()

    def notify_steps_to_stop() -> None:
        if pipeline._stop_called:  # a stop, not the run's end (distilabel notifies then too)
            _run_stopped.set()
        original_notify()

    with ExitStack() as stack:
        stack.enter_context(_on(pipeline, "_manage_batch_flow", manage_batch_flow))
        stack.enter_context(_on(pipeline, "_request_initial_batches", request_initial_batches))
        stack.enter_context(_on(pipeline, "_notify_steps_to_stop", notify_steps_to_stop))
        yield


def run_ahead_limit(max_in_flight: int, input_batch_size: int, replicas: int = 1) -> int:
    """Batches sent to a streaming step and not yet back, beyond which the generator feeding
    it is not asked to run ahead: as many as its streams could hold were every row a single
    sequence, plus :data:`_QUEUED_AHEAD`, per replica. So at most about ``max_in_flight``
    rows per replica wait, whatever the size of the input."""
    return replicas * (math.ceil(max_in_flight / input_batch_size) + _QUEUED_AHEAD)


def _streaming_successors(pipeline: Any, step_name: str) -> list[Any]:
    successors = (pipeline.dag.get_step(name)["step"] for name in pipeline.dag.get_step_successors(step_name))
    return [step for step in successors if streams_batches(step)]


def _waiting_batches(pipeline: Any, step_name: str) -> int:
    """Batches distilabel has sent to ``step_name`` that have not come back from it yet."""
    manager = pipeline._batch_manager
    last = manager.get_last_batch_sent(step_name)
    sent = 0 if last is None else last.seq_no + 1  # a step's batches are numbered from 0
    return sent - len(manager._received_batch_seq_nos.get(step_name, ()))


def _has_room_ahead(pipeline: Any, step: Any) -> bool:
    limit = run_ahead_limit(step.max_in_flight, step.input_batch_size, pipeline.dag.get_step_replica_count(step.name))
    return _waiting_batches(pipeline, step.name) < limit


class _Held:
    """A batch taken from the input queue and not yet sent: its rows and their mapping state."""

    def __init__(self, batch: _Batch, rows: list[dict[str, Any]], overridden: list[dict[str, Any]]) -> None:
        self.batch, self.rows, self.overridden = batch, rows, overridden
        self.context: Any = None
        self.result: list[dict[str, Any]] | None = None  # set when it failed before finishing
        self.tally: Any = None


def _streaming_loop(wrapper: _StepWrapper) -> None:
    """distilabel's loop of a normal step, for a streaming step: batches overlap on one stream.

    As the original: ``None`` stops at once (what is in flight is dropped; what finished
    is stored), ``LAST_BATCH_SENT_FLAG`` stops taking batches, a batch the step fails on is
    sent with its outputs imputed (and the failure recorded), and the loop ends after
    the ``last_batch`` is sent. Unlike it, batches already taken are finished and sent
    before the loop ends on the flag, and a stopped run ends the loop at once, without
    waiting for the stream to have room to read ``None`` behind the queued batches.
    """
    from distilabel.constants import LAST_BATCH_SENT_FLAG

    step: Any = wrapper.step
    stopping = f"🛑 Stopping processing batches from step '{step.name}' (replica ID: {wrapper.replica})"
    ordered = step.open_batches()
    held: dict[int, _Held] = {}
    serial = 0
    no_more = False  # the flag or the last batch has been taken
    last_pull = 0.0
    try:
        while True:
            if _run_stopped is not None and _run_stopped.is_set():
                step._logger.info(stopping)
                return
            # Take queued batches: wait for one when idle, else look now and then.
            while not no_more and ordered.has_room and (
                not ordered.pending or time.monotonic() - last_pull >= _PULL_EVERY_S
            ):
                last_pull = time.monotonic()
                try:
                    batch = wrapper.input_queue.get(block=not ordered.pending)
                except queue.Empty:
                    break
                if batch is None:
                    step._logger.info(stopping)
                    return
                if batch == LAST_BATCH_SENT_FLAG:
                    no_more = True
                    break
                step._logger.info(f"📦 Processing batch {batch.seq_no} in '{batch.step_name}' (replica ID: {wrapper.replica})")
                held[serial] = _take(wrapper, ordered, batch, serial)
                serial += 1
                no_more = batch.last_batch
            if not ordered.pending:
                if no_more:
                    return
                continue
            try:
                released = ordered.poll(_POLL_S)
            except Exception:
                # The backend failed as a whole: every batch in flight fails, as each would
                # have in the original loop; a fresh stream takes the next ones.
                for key in sorted(held):
                    _fail(wrapper, held.pop(key))
                ordered.close()
                ordered = step.open_batches()
                if no_more:
                    return
                continue
            for key, completions in released:
                item = held.pop(key)
                if item.result is None:
                    try:
                        out = step.rows_from_completions(item.rows, item.context, completions)
                        item.result = [
                            step._apply_mappings_and_restore_overriden(row, item.overridden[i % len(item.overridden)])
                            for i, row in enumerate(out)
                        ]
                    except Exception:
                        _fail(wrapper, item)
                        continue
                _send(wrapper, item)
    finally:
        ordered.close()


def _take(wrapper: _StepWrapper, ordered: Any, batch: _Batch, key: int) -> _Held:
    """Read the batch, apply the step's input mappings and add its requests (or its failure)."""
    step: Any = wrapper.step
    if batch.data_path is not None:
        batch.read_batch_data_from_fs()
    rows = batch.data[0]
    if step.input_mappings:
        (rows,), overridden = step._apply_input_mappings((rows,))
    else:
        overridden = [{} for _ in rows]
    item = _Held(batch, rows, overridden or [{}])
    try:
        step.report_started()
        item.context, prompts, specs = step.completion_requests(rows)
        item.tally = step.batch_tally(rows, prompts)
        ordered.add(key, prompts, specs, item.tally)
    except Exception:
        item.result = _imputed(wrapper, batch)
        ordered.add(key, [], [])  # nothing to run, but it holds its place in the order
        # Its rows go on, empty: the step has handled them (a tally of no requests counts them at once).
        (item.tally or step.row_tally(len(rows), [])).close()
    return item


def _fail(wrapper: _StepWrapper, item: _Held) -> None:
    """Send a batch the step failed on with imputed outputs (call inside the ``except``)."""
    item.result = _imputed(wrapper, item.batch)
    if item.tally is not None:
        item.tally.close()
    _send(wrapper, item)


def _imputed(wrapper: _StepWrapper, batch: _Batch) -> list[dict[str, Any]]:
    # Inside the `except`: the failure hooks record the exception being handled.
    result = wrapper._impute_step_outputs(batch)
    wrapper.step._logger.warning(
        f"⚠️ Processing batch {batch.seq_no} with step '{wrapper.step.name}' failed. Sending empty batch filled with `None`s..."
    )
    wrapper.step._logger.warning(f"Subprocess traceback:\n\n{traceback.format_exc()}")
    return result


def _send(wrapper: _StepWrapper, item: _Held) -> None:
    item.batch.set_data([item.result])
    wrapper._send_batch(item.batch)


__all__ = [
    "PRIVATE_NAMES", "SUPPORTED", "DistilabelMismatch", "LeafWriter", "WorkerFailureHooks", "check",
    "in_teardown", "install_failure_hooks", "install_streaming_loop", "leaf_output", "leaf_output_failure", "patched",
    "replica_identifier", "reserved_gpus", "run_ahead_limit", "run_cache_dir", "runtime_parameter_annotation",
    "sigint_setup", "stop_replicas_at_stage_end", "streaming", "streams_batches",
]
