"""Run a recipe's command under cProfile: the driver and each distilabel step worker.

    .venv/bin/python benchmarks/profiled.py PROFILE_DIR pipelines/dpo_100k.py --preset scale ...

The driver (main thread: building the graph, waiting on distilabel, the export, card and
report) is profiled whole; each step is profiled inside its worker process around
distilabel's ``_StepWrapper.run`` (load, then every batch's ``process``), which this
benchmark wraps here, at run time, for this process only. Writes ``driver.prof`` and
``step-NAME.prof`` into PROFILE_DIR, and ``top.txt``: each profile's functions by
cumulative and by own time. Profiling slows Python code (a few tens of percent), so time
the runs with ``benchmarks/scale.py`` and use this for where the time goes. The clock is the
process's CPU time, not the wall clock: waiting for other steps (or for a CPU on a shared
machine) is not counted.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import runpy
import sys
import time
from pathlib import Path


def profile_steps(folder: Path) -> None:
    """Wrap distilabel's step-worker entry point so each step dumps its own profile."""
    from distilabel.pipeline.step_wrapper import _StepWrapper

    original = _StepWrapper.run

    def run(self: _StepWrapper) -> str:
        profiler = cProfile.Profile(time.process_time)
        try:
            return profiler.runcall(original, self)
        finally:
            profiler.dump_stats(folder / f"step-{self.step.name}.prof")

    _StepWrapper.run = run


def summarise(folder: Path, top: int = 25) -> str:
    """Each profile's heaviest functions, by cumulative and by own time."""
    out = io.StringIO()
    for path in sorted(folder.glob("*.prof")):
        for key in ("cumulative", "tottime"):
            out.write(f"==== {path.name} by {key}\n")
            pstats.Stats(str(path), stream=out).strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


def main() -> int:
    folder, script, *args = sys.argv[1:]
    folder_path = Path(folder)
    folder_path.mkdir(parents=True, exist_ok=True)
    sys.argv = [script, *args]
    profile_steps(folder_path)
    profiler = cProfile.Profile(time.process_time)
    code = 0
    try:
        profiler.runcall(runpy.run_path, script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        profiler.dump_stats(folder_path / "driver.prof")
        (folder_path / "top.txt").write_text(summarise(folder_path))
    return code


if __name__ == "__main__":
    sys.exit(main())
