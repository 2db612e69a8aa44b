"""Steps that keep the engine full across batches: a stream under distilabel's batch loop.

distilabel's worker loop (``_StepWrapper._non_generator_process_loop``, the same in a
local process and in a Ray actor) takes one batch, runs ``process()`` on it, sends the
result and only then looks at the next batch, although the pipeline has usually queued
it already. With long-tailed generation lengths the engine idles through every batch's
tail. A :class:`~steps.base.StreamingStep` runs in another loop (installed over
distilabel's on import of this module, for those steps only): it keeps taking queued
batches into one :class:`~magpie_dl.run.streaming.OrderedBatches` while earlier ones run, up
to ``max_in_flight`` sequences, and sends each batch as distilabel would (same batch
object, ``seq_no`` and ``last_batch``), complete and in the order received. A generator
step feeding such a step is asked for its next batch as soon as it delivers one (not
when the step has finished the last), so there is something queued to take, while the
step has fewer batches waiting than its streams could take plus two (:func:`run_ahead_limit`):
a fast loader does not queue the whole instruction set.

The step's ``process()`` still completes one batch on its own (standalone use, and
pipelines run without the loop), through the same two hooks.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import time
import traceback
from typing import TYPE_CHECKING, Any

from magpie_dl.run.progress import RowTally
from magpie_dl.run.streaming import OrderedBatches
from magpie_dl.steps.base import StreamingStep

__all__ = ["StreamingStep", "run_ahead_limit", "streaming_loop"]

if TYPE_CHECKING:
    from distilabel.pipeline.batch import _Batch
    from distilabel.pipeline.step_wrapper import _StepWrapper

# How often a busy loop looks for newly queued batches (a queue read is an IPC round trip).
_PULL_EVERY_S = 0.1
# How long one poll of the stream may wait for a finished request.
_POLL_S = 0.05

# Set by the driver when a run is stopped (a signal; not at its normal end) and seen by the
# streaming loops of the step workers it forked: distilabel's own stop marker queues
# behind every batch already sent, which a full stream would finish first (minutes of
# generation at scale). Created at import, before the workers fork, so they share it; a
# Ray actor has its own, never set, and stops on the marker.
_RUN_STOPPED = multiprocessing.Event()


class _Held:
    """A batch taken from the input queue and not yet sent: its rows and their mapping state."""

    def __init__(self, batch: _Batch, rows: list[dict[str, Any]], overridden: list[dict[str, Any]]) -> None:
        self.batch, self.rows, self.overridden = batch, rows, overridden
        self.context: Any = None
        self.result: list[dict[str, Any]] | None = None  # set when it failed before finishing
        self.tally: RowTally | None = None


def streaming_loop(wrapper: _StepWrapper) -> None:
    """distilabel's non-generator loop for a :class:`StreamingStep`, overlapping batches.

    As the original: ``None`` stops at once (what is in flight is dropped; what finished
    is stored), ``LAST_BATCH_SENT_FLAG`` stops taking batches, a batch the step fails on is
    sent with its outputs imputed (and the failure recorded), and the loop ends after
    the ``last_batch`` is sent. Unlike it, batches already taken are finished and sent
    before the loop ends on the flag, and a stopped run ends the loop at once, without
    waiting for the stream to have room to read ``None`` behind the queued batches.
    """
    from distilabel.constants import LAST_BATCH_SENT_FLAG

    step: Any = wrapper.step
    ordered = step.open_batches()
    held: dict[int, _Held] = {}
    serial = 0
    no_more = False  # the flag or the last batch has been taken
    last_pull = 0.0
    try:
        while True:
            if _RUN_STOPPED.is_set():
                step._logger.info(f"🛑 Stopping processing batches from step '{step.name}' (replica ID: {wrapper.replica})")
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
                    step._logger.info(f"🛑 Stopping processing batches from step '{step.name}' (replica ID: {wrapper.replica})")
                    return
                if batch == LAST_BATCH_SENT_FLAG:
                    step._logger.debug("Received `LAST_BATCH_SENT_FLAG`. Stopping...")
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


def _take(wrapper: _StepWrapper, ordered: OrderedBatches, batch: _Batch, key: int) -> _Held:
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
    # Inside the `except`: step_errors' impute hook records the exception being handled.
    result = wrapper._impute_step_outputs(batch)
    wrapper.step._logger.warning(
        f"⚠️ Processing batch {batch.seq_no} with step '{wrapper.step.name}' failed. Sending empty batch filled with `None`s..."
    )
    wrapper.step._logger.warning(f"Subprocess traceback:\n\n{traceback.format_exc()}")
    return result


def _send(wrapper: _StepWrapper, item: _Held) -> None:
    item.batch.set_data([item.result])
    wrapper._send_batch(item.batch)


# Batches a streaming step may have waiting beyond what its streams can take: the next
# ones are queued when the stream has room, and no more is asked of the generator.
_QUEUED_AHEAD = 2


def run_ahead_limit(max_in_flight: int, input_batch_size: int, replicas: int = 1) -> int:
    """Batches sent to a streaming step and not yet back, beyond which the generator feeding
    it is not asked to run ahead: as many as its streams could hold were every row a single
    sequence, plus :data:`_QUEUED_AHEAD`, per replica. So at most about ``max_in_flight``
    rows per replica wait, whatever the size of the input."""
    return replicas * (math.ceil(max_in_flight / input_batch_size) + _QUEUED_AHEAD)


def _streaming_successors(pipeline: Any, step_name: str) -> list[Any]:
    from distilabel.constants import STEP_ATTR_NAME

    successors = (pipeline.dag.get_step(name)[STEP_ATTR_NAME] for name in pipeline.dag.get_step_successors(step_name))
    return [step for step in successors if isinstance(step, StreamingStep)]


def _waiting_batches(pipeline: Any, step_name: str) -> int:
    """Batches distilabel has sent to ``step_name`` that have not come back from it yet."""
    manager = pipeline._batch_manager
    last = manager.get_last_batch_sent(step_name)
    sent = 0 if last is None else last.seq_no + 1  # a step's batches are numbered from 0
    return sent - len(manager._received_batch_seq_nos.get(step_name, ()))


def _has_room_ahead(pipeline: Any, step: Any) -> bool:
    limit = run_ahead_limit(step.max_in_flight, step.input_batch_size, pipeline.dag.get_step_replica_count(step.name))
    return _waiting_batches(pipeline, step.name) < limit


def _install() -> None:
    """Route :class:`StreamingStep` steps to :func:`streaming_loop` (others keep distilabel's
    loop), and let a generator step that feeds one run ahead.

    distilabel asks a generator for its next batch only once its successor has finished
    the previous one, so a step fed by a generator would never find a batch queued: the
    driver asks for the next batch as soon as one arrives, while every streaming step it
    feeds has room ahead (:func:`run_ahead_limit`; past it, distilabel's own pacing asks
    for one batch per batch the step finishes). And when a run is stopped, the driver sets
    :data:`_RUN_STOPPED` as it notifies the steps, so a full stream stops at once.

    Done on import of this module, which every streaming step's module imports: in the
    driver that builds the pipeline, in a local run's workers (forked from it) and in a
    Ray actor (which imports the step's module to unpickle it) alike.
    """
    from distilabel.pipeline.base import BasePipeline
    from distilabel.pipeline.step_wrapper import _StepWrapper

    original_loop = _StepWrapper._non_generator_process_loop
    if getattr(original_loop, "_streams", False):
        return
    original_flow = BasePipeline._manage_batch_flow
    original_start = BasePipeline._request_initial_batches
    original_notify = BasePipeline._notify_steps_to_stop

    def loop(self: _StepWrapper) -> None:
        if isinstance(self.step, StreamingStep) and not self.step.is_global:
            return streaming_loop(self)
        return original_loop(self)

    def manage_batch_flow(self: BasePipeline, batch: _Batch) -> None:
        step = self._get_step_from_batch(batch)
        streaming = _streaming_successors(self, batch.step_name) if step.is_generator and not batch.last_batch else []
        if not streaming:
            return original_flow(self, batch)
        asked = self._batch_manager.get_last_batch_sent(batch.step_name)
        original_flow(self, batch)
        if self._batch_manager.get_last_batch_sent(batch.step_name) is asked and all(  # distilabel did not ask for more
            _has_room_ahead(self, successor) for successor in streaming
        ):
            self._request_batch_from_generator(batch.step_name)

    def request_initial_batches(self: BasePipeline) -> None:
        _RUN_STOPPED.clear()  # before any batch flows: no loop is busy yet
        original_start(self)

    def notify_steps_to_stop(self: BasePipeline) -> None:
        if self._stop_called:  # a stop, not the run's end (distilabel notifies then too)
            _RUN_STOPPED.set()
        original_notify(self)

    loop._streams = True  # type: ignore[attr-defined]
    _StepWrapper._non_generator_process_loop = loop  # type: ignore[method-assign]
    BasePipeline._manage_batch_flow = manage_batch_flow  # type: ignore[method-assign]
    BasePipeline._request_initial_batches = request_initial_batches  # type: ignore[method-assign]
    BasePipeline._notify_steps_to_stop = notify_steps_to_stop  # type: ignore[method-assign]


_install()
