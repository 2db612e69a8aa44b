"""Failures inside distilabel's step workers, brought back to the user as one line.

distilabel runs each step in a forked worker. When a step fails to load, the worker
sends the exception back together with the step, whose loaded model, tokenizer or
store does not pickle: the user sees a pickling error and ``Failed to load all the
steps``, never the cause. When a step fails on a batch, distilabel logs a traceback,
fills the batch's outputs with ``None`` and the run goes on to "succeed".

Around a run, :func:`surfaced` has every worker write each failure (step, load or batch,
the exception's first line, secrets masked) to a file of the run, and sends back to
distilabel a stand-in that pickles. When the run ends, a recorded failure becomes a
:class:`StepFailedError` whose message is the line to show; distilabel's own logs about
the same failure are left out. It also gives the driver its logging back (distilabel
leaves a handler on its closed log queue, and every later log line would print
``--- Logging error ---``) and removes distilabel's per-run cache (batches passed
between steps, its copy of the output) once the rows are loaded.

Applies to local runs, whose workers are forked from this process; Ray actors keep
distilabel's behaviour.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magpie_dl import distilabel_compat
from magpie_dl.scrub import scrub_text

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline, RayPipeline

FAILURES_ENV = "MAGPIE_DL_STEP_FAILURES"


class StepFailedError(RuntimeError):
    """A step failed inside its worker; the message is one line for the user."""


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, secrets masked, at most 300 characters."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    return scrub_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)[:300]


def record(step: str, phase: str, exc: BaseException, knock_on: bool = False) -> None:
    """In a worker: append one failure to the run's file (no-op outside a surfaced run).

    ``knock_on``: the step failed on a batch after another step had failed, most likely on
    the ``None`` distilabel put in the failed step's output columns; it is kept out of the
    line shown (it is not a second bug)."""
    path = os.environ.get(FAILURES_ENV)
    if not path:
        return
    failure = {"step": step, "phase": phase, "error": describe(exc)} | ({"knock_on": True} if knock_on else {})
    line = json.dumps(failure, ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as handle:  # one short append per failure
        handle.write(line + "\n")


def read_failures(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary_line(failures: list[dict[str, Any]]) -> str:
    """The one line for the user: the first failure, how often it happened, what else failed
    (knock-on failures of later steps left out)."""
    failures = [f for f in failures if not f.get("knock_on")] or failures
    first = failures[0]
    same = [f for f in failures if f["step"] == first["step"] and f["phase"] == first["phase"]]
    if first["phase"] == "load":
        what = f"step '{first['step']}' failed to load: {first['error']}"
    else:
        batches = f"{len(same)} batch" + ("es" if len(same) > 1 else "")
        what = f"step '{first['step']}' failed on {batches}: {first['error']}"
    others = sorted({f["step"] for f in failures} - {first["step"]})
    more = f" (also failed: {', '.join(others)})" if others else ""
    return f"{what}{more}; nothing was exported, stored results are kept: fix the cause and rerun"


@contextmanager
def surfaced(pipeline: Pipeline | RayPipeline) -> Iterator[None]:
    """Around ``pipeline.run``: a failed step raises :class:`StepFailedError` (one line)."""
    distilabel_compat.install_failure_hooks(_Recorded())
    handle, name = tempfile.mkstemp(prefix="magpie-dl-failures-", suffix=".jsonl")
    os.close(handle)
    path = Path(name)
    previous = os.environ.get(FAILURES_ENV)
    os.environ[FAILURES_ENV] = name
    quiet = _SurfacedLogFilter(path)
    distilabel_log = logging.getLogger("distilabel.pipeline")
    distilabel_log.addFilter(quiet)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    _remove_run_cache(pipeline)  # a killed run's leftovers
    try:
        try:
            yield
        except Exception:
            failures = read_failures(path)
            if failures:
                raise StepFailedError(summary_line(failures)) from None
            raise
        failures = read_failures(path)
        if failures:
            raise StepFailedError(summary_line(failures))
    finally:
        distilabel_log.removeFilter(quiet)
        _restore_logging(root, *saved)
        _remove_run_cache(pipeline)
        if previous is None:
            os.environ.pop(FAILURES_ENV, None)
        else:
            os.environ[FAILURES_ENV] = previous
        path.unlink(missing_ok=True)


class _SurfacedLogFilter(logging.Filter):
    """Drops distilabel's lines about a failure once it is recorded (ours says it better)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if not message.startswith(distilabel_compat.FAILURE_LOG_LINES):
            return True
        try:
            return self.path.stat().st_size == 0
        except OSError:
            return True


def _restore_logging(root: logging.Logger, handlers: list[logging.Handler], level: int) -> None:
    """The driver's logging as before the run: distilabel leaves the root logger writing to
    its log queue, which it closes when the run ends."""
    from distilabel.utils.logging import stop_logging

    stop_logging()
    root.handlers[:] = handlers
    root.setLevel(level)


def _remove_run_cache(pipeline: Pipeline | RayPipeline) -> None:
    """Delete distilabel's cache of this run when it is the run's own directory.

    Our recipes point it inside their output directory (``Pipeline(cache_dir=...)``);
    runs never resume from it (``use_cache=False``) and the output rows are loaded into
    an Arrow copy before this runs. distilabel's shared default (``~/.cache/distilabel``)
    may hold other pipelines' runs and is left alone.
    """
    from distilabel.constants import PIPELINES_CACHE_DIR

    cache_dir = distilabel_compat.run_cache_dir(pipeline)
    shared = {PIPELINES_CACHE_DIR.resolve()}
    if os.environ.get("DISTILABEL_CACHE_DIR"):
        shared.add(Path(os.environ["DISTILABEL_CACHE_DIR"]).resolve())
    if cache_dir not in shared:
        shutil.rmtree(cache_dir, ignore_errors=True)


class _Recorded(distilabel_compat.WorkerFailureHooks):
    """In a worker: every failure written to the run's file; a batch failure logged as one line."""

    def failed(self, step_name: str, phase: str, exc: BaseException) -> None:
        record(step_name, phase, exc)

    def batch_failed(self, step: Any, batch_seq_no: int, exc: BaseException) -> None:
        path = os.environ.get(FAILURES_ENV)
        earlier = path is not None and any(f["step"] != step.name for f in read_failures(Path(path)))
        record(step.name, "process", exc, knock_on=earlier)
        if not any(isinstance(f, _WorkerLogFilter) for f in step._logger.filters):
            step._logger.addFilter(_WorkerLogFilter())
        if not earlier:  # else most likely the None a failed step left in its rows: no second warning
            step._logger.warning(
                f"step '{step.name}' failed on batch {batch_seq_no}: {describe(exc)} "
                "(its rows get no result; the run will end with an error)"
            )

    def describe(self, exc: BaseException) -> str:
        return describe(exc)

    def scrub(self, text: str) -> str:
        return scrub_text(text)


class _WorkerLogFilter(logging.Filter):
    """In a worker: distilabel's batch-failure traceback is replaced by our one-line warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (os.environ.get(FAILURES_ENV) and str(record.msg).startswith(distilabel_compat.FAILURE_LOG_LINES))


__all__ = ["StepFailedError", "describe", "record", "summary_line", "surfaced"]
