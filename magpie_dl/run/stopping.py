"""Stopping a run: Ctrl-C (SIGINT) and SIGTERM never turn a partial run into a finished one.

distilabel answers SIGINT by stopping gently and returning the rows it has, as if the
run had ended. A run that did not reach its end (a stop was asked for, or fewer rows
came out than went in) therefore raises :class:`RunStopped` instead of returning rows:
nothing is exported, the previous dataset stays, and the user gets one line saying how
far the run got and that a rerun resumes from the stored work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from magpie_dl import distilabel_compat

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """A run ended before all its rows were done; nothing was exported.

    ``signum`` is the signal that stopped it (None: rows were missing at the end);
    ``rows`` / ``expected`` count the rows that reached the end of the pipeline.
    """

    def __init__(self, signum: int | None, rows: int | None = None, expected: int | None = None) -> None:
        super().__init__(signum, rows, expected)
        self.signum, self.rows, self.expected = signum, rows, expected
        self.steps: dict[str, tuple[int, int]] = {}

    def at(self, progress: dict[str, tuple[int, int]], totals: dict[str, int]) -> RunStopped:
        """This stop with each counted step's rows done (``progress``: the store's) out of its total."""
        self.steps = {name: (progress.get(name, (0, 0))[0], total) for name, total in totals.items()}
        return self

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a process ended by it; 1 for missing rows."""
        return 128 + self.signum if self.signum else 1

    def line(self, out_dir: Any) -> str:
        """The one line a user sees: what stopped it, how far it got, what to do."""
        cause = f"stopped by {signal.Signals(self.signum).name}" if self.signum else "ended early"
        got = []
        if self.rows is not None and self.expected is not None:
            got.append(f"{self.rows} of {self.expected} rows reached the end")
        if self.steps:
            got.append(", ".join(f"{name} {done}/{total}" for name, (done, total) in self.steps.items()))
        far = f" ({'; '.join(got)})" if got else ""
        return (
            f"error: the run {cause} before it finished{far}; nothing was published to {out_dir} "
            f"(an earlier dataset there is untouched); rerun the same command to resume from the stored work"
        )


class StopSignals:
    """Within the block, SIGINT and SIGTERM stop the run; the first one is kept in ``received``.

    Outside a pipeline run either signal raises ``KeyboardInterrupt`` where the run is
    (loading, exporting), so staged files are discarded on the way out. Around a pipeline
    run (:meth:`around`) both ask distilabel to stop gently, as its own Ctrl-C handler
    would (a second signal ends the process at once), and the stop is recorded:
    distilabel resets its own flag before returning the partial rows. :meth:`deferred`
    holds a signal back (recorded, not raised) while a release is moved into place, so
    it is never half published.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._defer = False
        self._gentle: Callable[[], Any] | None = None
        self._stopping = False
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        # A signal the run was started ignoring (a background job's SIGINT) stays ignored.
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS
                          if signal.getsignal(sig) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            if handler is _leave_at_once:  # the run is over: no longer "before it started"
                handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, handler)

    @contextmanager
    def around(self, pipeline: Any) -> Iterator[None]:
        """While ``pipeline`` runs, a signal stops it gently instead of raising.

        distilabel installs its SIGINT handler once its workers exist (and never removes
        it); here that step installs ours instead, pointed at the pipeline's own stop.
        """
        def install(gentle_stop: Any) -> Any:
            self._gentle = gentle_stop
            self._defer = False
            if self.received:  # a signal came while distilabel was setting up
                self._stop_gently(self.received)
            return signal.getsignal(signal.SIGINT)

        # Until then a signal is only recorded: raised inside distilabel's set-up, it can
        # leave non-daemon pool workers that the interpreter then waits for forever.
        self._defer = True
        # A stopped run's leaf wrote nothing yet: distilabel's warning about it would come
        # before our own line, which says what happened and what to do.
        distiset_log = logging.getLogger("distilabel.distiset")
        quiet = _AfterStop(self)
        distiset_log.addFilter(quiet)
        try:
            with distilabel_compat.sigint_setup(pipeline, install):
                yield
        finally:
            distiset_log.removeFilter(quiet)
            self._gentle = None
            self._defer = False
            for sig in self._previous:
                signal.signal(sig, self._handle)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals within the block are recorded, not raised."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A forked process (a pool worker before distilabel sets its handlers) inherited
            # this one. A terminal's Ctrl-C reaches the whole group: the run stops it, so
            # it ignores SIGINT; SIGTERM is how the pool ends its workers, so that ends it.
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.received = self.received or signum
        if self._defer:
            return
        if self._gentle is not None:
            self._stop_gently(signum)
            return
        raise KeyboardInterrupt

    def _stop_gently(self, signum: int) -> None:
        """The first signal asks the pipeline to stop; another one stops the process at once.

        distilabel's own repeated-stop path returns holding its stop lock (a deadlock), so
        a second signal never reaches it. Stopping at once loses nothing: stored work is
        committed per batch, and nothing is published before the pipeline returns.
        """
        if self._stopping:
            sys.stderr.write(
                f"\nerror: the run stopped at once by a second {signal.Signals(signum).name}; nothing was published; "
                "rerun the same command to resume from the stored work\n"
            )
            sys.stderr.flush()
            os._exit(128 + signum)
        self._stopping = True
        assert self._gentle is not None
        self._gentle()


class _AfterStop(logging.Filter):
    """Drops distilabel's "no output files" warning once a stop signal came."""

    def __init__(self, signals: StopSignals) -> None:
        super().__init__()
        self.signals = signals

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.signals.received and str(record.msg).startswith("No output files for step"))


def exit_on_stop_signals() -> None:
    """Until a run starts (imports, config checks), SIGINT and SIGTERM end the process
    with one line instead of a traceback from whichever import was under way.

    Nothing is written before a run claims its output directory, so ending at once is
    safe; :class:`StopSignals` takes over when the run starts. A signal ignored at start
    stays ignored.
    """
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _leave_at_once)


def _leave_at_once(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write(
        f"error: the run stopped by {signal.Signals(signum).name} before it finished (before it started); "
        "nothing was published; rerun the same command to resume from the stored work\n"
    )
    sys.stderr.flush()
    os._exit(128 + signum)
