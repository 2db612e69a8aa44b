"""Live progress and up-front estimates.

Steps run in distilabel's worker processes; each counts its finished rows and tokens
in the run's result store (:meth:`ResultStore.count_progress`). A thread in the main
process reads those counters and prints one line per interval: per step, rows done
of the total, rows/s, tokens/s and an ETA.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from magpie_dl.store import ResultStore


@dataclass
class StepRate:
    """Progress of one step at one moment."""

    name: str
    done: int
    total: int
    rows_per_s: float
    tokens_per_s: float

    @property
    def eta_s(self) -> float | None:
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / self.rows_per_s if self.rows_per_s > 0 else None

    def line(self) -> str:
        eta = self.eta_s
        eta_text = "?" if eta is None else _duration(eta)
        percent = 100 * self.done / self.total if self.total else 100
        return (
            f"{self.name} {self.done}/{self.total} ({percent:.0f}%) {self.rows_per_s:.1f} rows/s "
            f"{_count(self.tokens_per_s)} tok/s ETA {eta_text}"
        )


def rates(
    counters: dict[str, tuple[int, int]],
    totals: dict[str, int],
    first_seen: dict[str, tuple[float, int, int]],
    now: float,
    finished: dict[str, float] | None = None,
) -> list[StepRate]:
    """Per-step rates, in the order of ``totals``.

    A step's rate counts from the moment it was first seen working: its counter appears
    when it starts its first batch (:meth:`StoredResults.report_started`), so model loading
    and waiting for upstream steps do not drag it down, and a step that finishes in one
    batch still shows its real rate. ``first_seen`` maps a step to (time, rows, tokens) then;
    ``finished`` (kept by the caller) to the time it was first seen done.
    """
    out = []
    for name, total in totals.items():
        done, tokens = counters.get(name, (0, 0))
        if name in counters and name not in first_seen:
            first_seen[name] = (now, done, tokens)
        since, rows0, tokens0 = first_seen.get(name, (now, done, tokens))
        if done >= total and name in first_seen:
            # A finished step keeps the rate it ended with: its clock stops when it is first seen done.
            until = finished.setdefault(name, now) if finished is not None else now
        else:
            until = now
        elapsed = until - since
        rows_per_s = (done - rows0) / elapsed if elapsed > 0 else 0.0
        tokens_per_s = (tokens - tokens0) / elapsed if elapsed > 0 else 0.0
        out.append(StepRate(name, min(done, total), total, rows_per_s, tokens_per_s))
    return out


class ProgressMonitor:
    """Prints the run's progress every ``interval_s`` seconds until stopped."""

    def __init__(
        self, store: ResultStore, totals: dict[str, int], interval_s: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.store = store
        self.totals = totals
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="magpie-progress", daemon=True)
        self._first_seen: dict[str, tuple[float, int, int]] = {}
        self._finished: dict[str, float] = {}

    def __enter__(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def snapshot(self) -> list[StepRate]:
        counters = self.store.progress()
        # The steps' own clocks: a step that started and finished between two looks still
        # shows the rate it ran at, not 0 (wall-clock times: they come from other processes).
        for name, (first, rows, tokens, last) in self.store.progress_times().items():
            self._first_seen.setdefault(name, (first, rows, tokens))
            if name in self.totals and counters.get(name, (0, 0))[0] >= self.totals[name]:
                self._finished.setdefault(name, last)
        return rates(counters, self.totals, self._first_seen, time.time(), self._finished)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                line = " | ".join(rate.line() for rate in self.snapshot())
            except Exception:  # the store is busy or gone: skip this tick, never kill the run
                continue
            print(f"[progress] {line}", file=self.stream, flush=True)


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

