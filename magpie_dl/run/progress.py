"""Live progress and up-front estimates.

Steps run in distilabel's worker processes (or Ray actors); each counts its finished rows
and tokens in the run's result store (:meth:`ResultStore.count_progress`) as they finish:
a :class:`RowTally` counts a row when the last request (or score) it waits for is done,
mid-batch. A thread in the main process reads those counters and shows, per step, rows
done of the total, rows/s and tokens/s over a recent window, and an ETA from the
window's token rate. On a terminal that is one line redrawn in place; otherwise a plain
line every interval. Each step ends on a line of its own at 100%.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from magpie_dl.run.store import ResultStore

WINDOW_S = 30.0
"""Rates are measured over about the last this many seconds: a step's pace now, not its average
since it started (which lags a step that slows down or speeds up, or waits on a long batch)."""


class RowTally:
    """Counts one batch's rows as they finish, for the live progress.

    Args:
        report: where counts go, ``report(rows, tokens)`` (a step's ``report_progress``).
        num_rows: rows in the batch.
        row_of: the row each request (or scored sequence) belongs to, by request index;
            default one request per row, rows without a request last.

    Rows with no request are done at once; a row is done when its last request is. Tokens
    are reported as the requests that carry them finish.
    """

    def __init__(self, report: Callable[[int, int], None], num_rows: int, row_of: Sequence[int] | None = None) -> None:
        self._report = report
        self._row_of = list(range(num_rows) if row_of is None else row_of)
        self._left = Counter(self._row_of)
        self._num_rows = num_rows
        self._counted = num_rows - len(self._left)
        if self._counted:
            report(self._counted, 0)

    def done(self, requests: Iterable[int], tokens: int = 0) -> None:
        """Requests ``requests`` (indices) finished, having generated or scored ``tokens``."""
        rows = 0
        for i in requests:
            row = self._row_of[i]
            self._left[row] -= 1
            rows += self._left[row] == 0
        self._counted += rows
        if rows or tokens:
            self._report(rows, tokens)

    def close(self) -> None:
        """The batch is over: rows not yet counted (their requests were read back from the store,
        or the batch failed and goes on with its outputs empty) count now."""
        if self._counted < self._num_rows:
            self._report(self._num_rows - self._counted, 0)
            self._counted = self._num_rows


@dataclass
class StepRate:
    """Progress of one step at one moment."""

    name: str
    done: int
    total: int
    rows_per_s: float
    tokens_per_s: float
    tokens: int = 0
    started: bool = True
    elapsed_s: float = 0.0  # since the step started counting (its run time once done)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def eta_s(self) -> float | None:
        """Seconds left: the rows left at the tokens a row has taken so far, over the recent token
        rate (rows finish in lumps, tokens flow). None until tokens are counted: rows with
        nothing to run, or read back from the store, count at once and say nothing of the pace."""
        if self.finished:
            return 0.0
        if self.tokens <= 0 or self.done <= 0 or self.tokens_per_s <= 0:
            return None
        return (self.total - self.done) * (self.tokens / self.done) / self.tokens_per_s

    def line(self) -> str:
        """The step's part of the progress line."""
        if not self.started:
            return f"{self.name} 0/{self.total}"
        percent = 100 * self.done // self.total if self.total else 100  # floored: 100% only when done
        head = (
            f"{self.name} {self.done}/{self.total} ({percent}%) {self.rows_per_s:.1f} rows/s "
            f"{_count(self.tokens_per_s)} tok/s"
        )
        if self.finished:
            return f"{head} in {_duration(self.elapsed_s)}"
        eta = self.eta_s
        return f"{head} ETA {'?' if eta is None else _duration(eta)}"


@dataclass
class Looks:
    """What the display has seen of one step: its first count (from the step's own clock)
    and its recent looks, ``(time, rows, tokens)``."""

    first: tuple[float, int, int]
    recent: deque[tuple[float, int, int]]

    @classmethod
    def starting(cls, at: float, rows: int, tokens: int) -> Looks:
        return cls((at, rows, tokens), deque([(at, rows, tokens)]))


def rates(
    counters: dict[str, tuple[int, int]],
    totals: dict[str, int],
    looks: dict[str, Looks],
    now: float,
    finished: dict[str, float] | None = None,
    window_s: float = WINDOW_S,
) -> list[StepRate]:
    """Per-step rates, in the order of ``totals``.

    ``looks`` (kept by the caller) holds what was seen of each step from the moment it was
    first seen working: its counter appears when it starts its first batch
    (:meth:`~magpie_dl.steps.base.ModelStep.report_started`), so model loading and waiting for
    upstream steps do not drag it down. A running step's rates are over about the last
    ``window_s`` seconds. A finished step (``finished``: the time it was first seen done,
    kept by the caller) shows its average over its whole run, which no longer decays.
    """
    out = []
    for name, total in totals.items():
        if name not in counters:
            out.append(StepRate(name, 0, total, 0.0, 0.0, started=False))
            continue
        done, tokens = counters[name]
        seen = looks.setdefault(name, Looks.starting(now, done, tokens))
        if done >= total:
            until = finished.setdefault(name, now) if finished is not None else now
            since, rows0, tokens0 = seen.first
        else:
            until = now
            recent = seen.recent
            if recent[-1][0] < now:
                recent.append((now, done, tokens))
            # Keep one look at or before the window's start, so the rate spans the window.
            while len(recent) > 2 and recent[1][0] <= now - window_s:
                recent.popleft()
            since, rows0, tokens0 = recent[0]
        elapsed = until - since
        rows_per_s = (done - rows0) / elapsed if elapsed > 0 else 0.0
        tokens_per_s = (tokens - tokens0) / elapsed if elapsed > 0 else 0.0
        run_time = until - seen.first[0]
        out.append(StepRate(name, min(done, total), total, rows_per_s, tokens_per_s, tokens, True, max(run_time, 0.0)))
    return out


class ProgressMonitor:
    """Shows the run's progress until stopped.

    On a terminal (``stream.isatty()``) one line, redrawn in place every ``interval_s``
    (default 1 s) and cut to the terminal's width; elsewhere (a log file, a pipe) a plain line
    every ``interval_s`` (default 5 s). The line holds the steps still running or waiting.
    A step seen at its total gets a line of its own at 100%, once; at the end of the run the
    monitor looks a last time, so a step that finished since the last look (or a whole run
    shorter than one interval) still ends on its 100% line.
    """

    def __init__(
        self,
        store: ResultStore,
        totals: dict[str, int],
        interval_s: float | None = None,
        stream: TextIO | None = None,
        width: int | None = None,
    ) -> None:
        self.store = store
        self.totals = totals
        self.stream = stream or sys.stderr
        self.live = _is_terminal(self.stream)
        self.interval_s = interval_s if interval_s is not None else (1.0 if self.live else 5.0)
        self.width = width  # None: the terminal's, looked up at each redraw (it may be resized)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="magpie-progress", daemon=True)
        self._lock = threading.Lock()
        self._looks: dict[str, Looks] = {}
        self._finished: dict[str, float] = {}
        self._announced: set[str] = set()
        self._drawn = False  # a live line is on the terminal, not yet ended by a newline

    def __enter__(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.show(final=True)
        except Exception:  # the store is gone: nothing more to say
            if self._drawn:
                self._write("\n")

    def snapshot(self) -> list[StepRate]:
        counters = self.store.progress()
        # The steps' own clocks: a step that started and finished between two looks still
        # shows the rate it ran at, not 0 (wall-clock times: they come from other processes).
        for name, (first, rows, tokens, last) in self.store.progress_times().items():
            self._looks.setdefault(name, Looks.starting(first, rows, tokens))
            if name in self.totals and counters.get(name, (0, 0))[0] >= self.totals[name]:
                self._finished.setdefault(name, last)
        return rates(counters, self.totals, self._looks, time.time(), self._finished)

    def show(self, final: bool = False) -> None:
        """Look once: a line of its own for each step newly at its total, then the live line
        (redrawn on a terminal, a new line elsewhere). ``final``: the last look, which ends
        the live line on a terminal."""
        with self._lock:
            now = self.snapshot()
            ended = [r for r in now if r.finished and r.name not in self._announced]
            self._announced.update(r.name for r in ended)
            running = [r for r in now if r.name not in self._announced]
            text = f"[progress] {' | '.join(r.line() for r in running)}" if running else ""
            lines = [f"[progress] {r.line()}" for r in ended]
            if self.live:
                out = "\r\x1b[K" if self._drawn else ""  # back to the line's start, cleared
                out += "".join(line + "\n" for line in lines)
                if text:
                    out += _fit(text, self.width or _terminal_width(self.stream)) + ("\n" if final else "")
                self._drawn = bool(text) and not final
            else:
                out = "".join(line + "\n" for line in lines + ([text] if text else []))
            self._write(out)

    def _write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.show()
            except Exception:  # the store is busy or gone: skip this look, never kill the run
                continue


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # not a real terminal (a test's stream)
        import shutil

        return shutil.get_terminal_size().columns


def _fit(text: str, width: int) -> str:
    """``text`` cut to fit ``width`` columns, one spare (a full line makes some terminals wrap)."""
    room = max(width - 1, 10)
    return text if len(text) <= room else text[: room - 1] + "…"


@contextmanager
def notices_as_lines(stream: TextIO | None = None) -> Iterator[None]:
    """While a run lasts, our own loggers' notices (``magpie_dl.*``: an endpoint set aside,
    a curation warning) print as one plain line each, ``WARNING: ...``, on stderr, from the
    driver and from step workers alike (they fork with this setting). Through distilabel's
    log handler they would be wrapped to 80 columns whenever the output is not a terminal
    (a CI log, a pipe), splitting the very line a user greps for."""
    logger = logging.getLogger("magpie_dl")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    propagated = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # not a second, wrapped copy through distilabel's handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagated


def _count(value: float) -> str:
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def silence_library_progress() -> None:
    """No progress bars from the libraries (the default, and ``--quiet``) (datasets, transformers, the
    hub client). Their environment switches are read at import, which has happened by
    now, so each library is also told directly; step workers fork from this process and
    inherit that, other processes (Ray actors, plain tqdm users) read the environment."""
    os.environ.update({"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    try:
        import datasets
        import huggingface_hub.utils
        import transformers.utils.logging

        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def quiet_libraries() -> None:
    """The default output: our progress lines and summary only. No progress bars, and only
    errors from the libraries' loggers and warnings (``--verbose`` keeps them all)."""
    import logging
    import warnings

    silence_library_progress()
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # processes that do not fork from this one
    for name in ("transformers", "datasets", "huggingface_hub", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers.utils.logging

        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass

