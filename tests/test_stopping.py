"""Stop signals outside a pipeline run, and the line a stopped run prints
(whole runs stopped at random moments: test_crash_safety.py)."""

from __future__ import annotations

import os
import signal

import pytest

from magpie_dl.run.stopping import RunStopped, StopSignals


def test_outside_a_pipeline_run_a_signal_stops_where_the_run_is():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
    assert stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # handlers given back


def test_a_signal_while_a_release_is_published_waits():
    with StopSignals() as stop:
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT  # recorded, nothing raised


def test_a_signal_the_run_was_started_ignoring_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.received is None
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_stop_line_says_how_far_and_how_to_resume():
    stopped = RunStopped(signal.SIGINT, 4, 24).at({"responses": (12, 40), "reward": (4, 8)},
                                                  {"responses": 24, "reward": 24, "queries": 24})
    line = stopped.line("out/x")
    assert stopped.exit_code == 130 and RunStopped(signal.SIGTERM).exit_code == 143 and RunStopped(None, 3, 5).exit_code == 1
    assert line == (
        "error: the run stopped by SIGINT before it finished (4 of 24 rows reached the end; responses 12/24, "
        "reward 4/24, queries 0/24); nothing was published to out/x (an earlier dataset there is untouched); "
        "rerun the same command to resume from the stored work"
    )
    assert "\n" not in line and "ended early" in RunStopped(None, 3, 5).line("out/x")


def test_before_the_run_starts_a_signal_is_one_line():
    import subprocess
    import sys

    code = ("from magpie_dl.run.stopping import exit_on_stop_signals; exit_on_stop_signals(); "
            "import os, signal, time; os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 143
    assert result.stderr.splitlines() == [
        "error: the run stopped by SIGTERM before it finished (before it started); nothing was published; "
        "rerun the same command to resume from the stored work"
    ]


def test_a_stopped_run_leaves_out_distilabel_s_warning_that_its_leaf_wrote_nothing(caplog):
    """Our one line says what happened; distilabel's "No output files" warning, which it logs
    for the leaf a stopped run never reached, would come before it."""
    import logging
    import types

    log = logging.getLogger("distilabel.distiset")
    pipeline = types.SimpleNamespace(_stop=lambda: None)
    with caplog.at_level(logging.WARNING, logger="distilabel.distiset"):
        with StopSignals() as stop, stop.around(pipeline):
            log.warning("No output files for step 'pairing', can't create a dataset.")  # a run that was not stopped
            stop.received = signal.SIGINT
            log.warning("No output files for step 'pairing', can't create a dataset.")
            log.warning("something else")
        log.warning("No output files for step 'pairing' (after the run)")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["No output files for step 'pairing', can't create a dataset.", "something else",
                        "No output files for step 'pairing' (after the run)"]
