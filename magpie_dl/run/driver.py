"""Running a recipe: config, lock, pipeline, progress, release, exit codes.

``pipelines/*.py`` define the graph; everything around it (parsing, validation before
any model loads, the output directory lock, signals, live progress, publishing the
release and the exit codes) is the same for every recipe and lives here, in
:func:`main_for`. What differs between recipes is a :class:`magpie_dl.run.recipes.Recipe`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from magpie_dl import distilabel_compat
from magpie_dl.run import outdir
from magpie_dl.config.dpo import REPO_ROOT, SMOLLM2_DIR, TINY_DIR, ConfigError, resolve
from magpie_dl.release.export import discard_loaded_copy, failed_requests
from magpie_dl.run.leaf_output import reconciled_leaf_output
from magpie_dl.run.outdir import OutputDirError
from magpie_dl.run.preflight import check_before_run
from magpie_dl.run.recipes import local_models_named
from magpie_dl.run.procs import die_with_parent, own_process_group, preload_worker_imports, shared_with_workers
from magpie_dl.run.progress import ProgressMonitor, notices_as_lines, quiet_libraries
from magpie_dl.run.set_aside import run_rows, set_aside_leaves
from magpie_dl.run.scaleout import maybe_ray, plan_local, run_options, scaleout_of, wants_ray
from magpie_dl.run.step_errors import StepFailedError, surfaced
from magpie_dl.run.stopping import RunStopped, StopSignals
from magpie_dl.run.store import ResultStore
from magpie_dl.run.unpublished import EXIT_CODE as NOT_PUBLISHED, NotPublished, in_teardown

if TYPE_CHECKING:
    from datasets import Dataset
    from distilabel.pipeline import Pipeline, RayPipeline

    from magpie_dl.run.recipes import Recipe

# A recipe's pipeline from its validated config (``build_pipeline`` in ``pipelines/*.py``).
Build = Callable[[Any], "Pipeline"]


class OutputLockedError(RuntimeError):
    """Another run holds the output directory."""


class RequestsFailedError(RuntimeError):
    """Requests failed after their retries: the run published nothing (exit 7); the
    message is the one line for the user."""

    @classmethod
    def of(cls, count: int, last: str) -> RequestsFailedError:
        # "HTTP 500 from http://host:port (body...); gave up after 5 attempts" -> "HTTP 500 from http://host:port"
        shown = match.group(0) if (match := re.match(r".*? from \S+", last)) else last
        return cls(
            f"{count} request{'s' if count != 1 else ''} failed after retries (last: {shown}); nothing was "
            "published; rerun the same command to retry them (--allow-failed-requests publishes the rest)"
        )


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` for the run; a second run on the same directory fails fast.

    A POSIX record lock (``lockf``) belongs to this process alone: the kernel drops it
    when the process dies (no stale lock after a kill), and unlike ``flock`` it is not
    shared with the step workers distilabel forks, which may outlive a killed parent
    for a moment.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / ".lock", "a+")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputLockedError(
            f"another run is writing to {out_dir}; wait for it or choose another --output-dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.lockf(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def claimed_output(out: str | Path, recipe: str, inputs: list[Any] | tuple[Any, ...] = ()) -> Iterator[Path]:
    """The output directory for a run of ``recipe``: checked and marked (:func:`outdir.claim`),
    locked (:func:`output_lock`), cleared of dead runs' staging; yields its absolute path."""
    out_dir = outdir.claim(out, recipe, inputs)
    with output_lock(out_dir):
        outdir.remove_stale_staging(out_dir)
        yield out_dir


def run_recipe(
    recipe: Recipe, build: Build, cfg: Any, fresh: bool = False, progress: bool = True,
    stop: StopSignals | None = None,
) -> tuple[Any, dict[str, dict[str, int]]]:
    """Build and run the pipeline, publish its release; returns what the recipe's export
    returned (the DPO summary, the curation counts) and the store usage.

    Stored results under ``DIR/cache`` are reused (``fresh`` deletes them first); the
    usage says, per step, how many results were read back and how many computed. A run
    that does not reach its end raises :class:`RunStopped` and publishes nothing.
    """
    own_signals = StopSignals() if stop is None else nullcontext(stop)
    with own_signals as stop, claimed_output(recipe.output_dir(cfg), recipe.name, [recipe.instructions(cfg)]) as out_dir:
        if fresh:
            shutil.rmtree(cfg.cache_dir, ignore_errors=True)
        store = ResultStore(cfg.cache_dir)
        store.reset_usage()
        # Every process distilabel forks (step workers, its queue manager) dies with us.
        os.register_at_fork(after_in_child=die_with_parent)
        os.register_at_fork(after_in_child=own_process_group)  # signals reach the run, not its workers
        pipeline = prepare(build, cfg, outdir.start_in_progress(out_dir))
        expected = instruction_count(recipe, cfg)
        totals = progress_totals(pipeline, expected)
        try:
            with ProgressMonitor(store, totals) if progress else nullcontext():
                rows = run_pipeline(pipeline, expected, stop)
            failed, last = failed_requests(rows)
            if failed and not cfg.backend.allow_failed_requests:
                # Failed requests are not stored: the rerun sends exactly those again.
                discard_loaded_copy(rows)
                raise RequestsFailedError.of(failed, last)
            with outdir.release(out_dir) as release:
                try:
                    release.add_in_progress()  # config.yaml, pipeline.yaml (and what steps wrote there)
                    # Memory-mapped Arrow: the export streams it, never a list of rows.
                    exported = recipe.export(cfg, rows, release.path, out_dir)
                except Exception as exc:  # the rows are stored: a rerun publishes them
                    raise NotPublished("the export", exc) from None
                discard_loaded_copy(rows)
                with stop.deferred():  # a signal now is too late: the whole release lands
                    release.publish()
        except KeyboardInterrupt:
            raise RunStopped(stop.received or signal.SIGINT).at(store.progress(), totals) from None
        except RunStopped as stopped:
            raise stopped.at(store.progress(), totals)
        except NotPublished as failed:
            raise failed.kept_in(cfg.cache_dir)
        usage = store.usage()
    return exported, usage


def progress_totals(pipeline: Pipeline | RayPipeline, expected_rows: int) -> dict[str, int]:
    """The steps the live progress follows, each with the rows it will handle: those that
    count their rows (:meth:`magpie_dl.steps.base.ModelStep.report_progress`; not query slots,
    duplicate marking, selection or pairing)."""
    return {name: expected_rows for name in pipeline.dag
            if hasattr(pipeline.dag.get_step(name)["step"], "report_progress")}


def prepare(build: Callable[[Any], Pipeline], cfg: Any, in_progress: Path) -> Pipeline | RayPipeline:
    """A recipe's pipeline for ``cfg`` (a RayPipeline under --ray / RAY_ADDRESS), with
    ``config.yaml`` and distilabel's ``pipeline.yaml`` written to ``in_progress`` (the
    run's in-progress directory: they join the dataset when the run finishes)."""
    pipeline = maybe_ray(build(cfg), cfg)
    (in_progress / "config.yaml").write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
    pipeline.save(in_progress / "pipeline.yaml", format="yaml")
    return pipeline


def run_pipeline(pipeline: Pipeline | RayPipeline, expected_rows: int | None = None,
                 stop: StopSignals | None = None) -> Dataset:
    """Run a recipe's pipeline; its output rows (memory-mapped Arrow).

    The step workers share the driver's imports (:func:`shared_with_workers`); scale-out
    picks the run options (:func:`run_options`). Delete the loaded copy with
    :func:`discard_loaded_copy` once the rows are written out. A run that did not reach
    its end (stopped by a signal under ``stop``, or fewer than ``expected_rows`` rows)
    raises :class:`RunStopped`.
    """
    try:
        # A step's failure: one StepFailedError line (surfaced); a signal: RunStopped (stop);
        # the leaf's rows typed over the whole run, not by their first chunk; streaming steps
        # streaming, and no copy of every batch on disk for distilabel's own cache, which we
        # never use (patched); our own notices from step workers as whole lines.
        with shared_with_workers(), surfaced(pipeline), notices_as_lines(), reconciled_leaf_output(pipeline), \
                distilabel_compat.patched(pipeline), stop.around(pipeline) if stop else nullcontext():
            distiset = pipeline.run(use_cache=False, **run_options(pipeline))
    except (KeyboardInterrupt, SystemExit):
        # A signal before the workers were up, or distilabel's forced stop (sys.exit).
        raise RunStopped((stop and stop.received) or signal.SIGINT) from None
    except Exception as exc:
        if stop and stop.received:  # the signal reached step workers too (Ctrl-C goes to the group)
            raise RunStopped(stop.received) from None
        if in_teardown(exc):  # every step finished; writing distilabel's output files failed
            raise NotPublished("distilabel's teardown", exc) from None
        raise
    # Stopped before any row reached the end, distilabel returns no config for that leaf at all.
    steps = {name: pipeline.dag.get_step(name)["step"] for name in pipeline.dag.leaf_steps}
    try:  # the rows set aside around the global steps joined back (magpie_dl.run.set_aside)
        rows = run_rows({name: data["train"] for name, data in distiset.items()}, list(steps), set_aside_leaves(steps))
    except Exception as exc:  # every step finished: a rerun publishes from the store
        raise NotPublished("reading the run's rows", exc) from None
    done = len(rows) if rows is not None else 0
    received = stop.received if stop else None
    if received or (expected_rows is not None and done < expected_rows):
        if rows is not None:
            discard_loaded_copy(rows)
        raise RunStopped(received, done, expected_rows)
    return rows


def instruction_count(recipe: Recipe, cfg: Any) -> int:
    """How many instructions the run handles (generated, or read from the recipe's source)."""
    source = recipe.instructions(cfg)
    if source:
        from magpie_dl.run.inputs import load_instructions

        return len(load_instructions(source))
    return cfg.generator.num_instructions


def print_plan(pipeline: Pipeline, cfg: Any, hours: dict[str, float] | None = None) -> None:
    """The graph, the resolved config and the placement plan of a recipe's pipeline (stages,
    replicas x GPUs, device ids; ``hours``: GPU-hours by kind of work); nothing is loaded."""
    print("graph:")
    for level in pipeline.dag.iter_based_on_trophic_levels():
        for name in level:
            step = pipeline.dag.get_step(name)["step"]
            after = ", ".join(pipeline.dag.get_step_successors(name)) or "(output)"
            print(f"  {name} [{type(step).__name__}] -> {after}")
    print("config:")
    print("  " + yaml.safe_dump(cfg.public_dict(), sort_keys=False).replace("\n", "\n  ").rstrip())
    for line in plan_local(pipeline, cfg, dry_run=True).lines(hours):  # --ray: as the cluster would, without one
        print(line)


def dry_run(recipe: Recipe, build: Build, cfg: Any) -> None:
    """Print the graph, the resolved config, the placement plan and the recipe's work estimate; nothing is loaded."""
    instructions = instruction_count(recipe, cfg)
    print_plan(build(cfg), cfg, recipe.gpu_hours(cfg, instructions) if recipe.gpu_hours else None)
    for line in recipe.estimate(cfg, instructions):
        print(line)


def main_for(recipe: Recipe, build: Build, description: str, argv: list[str] | None = None) -> int:
    """The command line of a recipe script (``pipelines/*.py``'s ``main()``); returns the exit code.

    0: done; 1: the run ended with rows missing; 2: a config or output directory refused
    before any model loads; 3: another run holds the output directory; 4: a push failed
    (the local release is intact); 5: a step failed; 6: every step finished and its results are
    stored, but distilabel's teardown or the export failed (rerunning the same command publishes
    from the store); 7: requests failed after their retries (nothing published; a rerun retries
    them); 128 + N: stopped by signal N.
    """
    # distilabel installs a rich excepthook that prints every frame's local variables,
    # tokens and API keys included; put Python's own back.
    sys.excepthook = sys.__excepthook__
    args = recipe.parser(description).parse_args(argv)
    try:
        for folder in local_models_named(args._presets[args.preset]):  # built on first use
            {TINY_DIR: _ensure_tiny_models, SMOLLM2_DIR: _ensure_smollm2}[folder]()
        cfg = resolve(args)
        if source := recipe.instructions(cfg):
            _check_instructions(source)
        if not (args.print_config or args.dry_run):
            outdir.check_output_dir(recipe.output_dir(cfg), recipe.name, [source])
        recipe.check(cfg)
        if not (args.print_config or args.dry_run):
            check_before_run(cfg)  # devices, hub models, hub token
            if not wants_ray(scaleout_of(cfg)):  # a Ray plan is checked once the cluster is joined
                plan_local(build(cfg), cfg)  # GPUs: TP within a node, enough devices, weights that fit
    except (ConfigError, OutputDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.public_dict(), sort_keys=False), end="")
        return 0
    if args.dry_run:
        try:
            dry_run(recipe, build, cfg)
        except ConfigError as exc:  # a plan the GPUs cannot hold
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    # Our progress lines replace distilabel's per-batch INFO logs (DISTILABEL_LOG_LEVEL=INFO brings them back).
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    if not args.verbose:
        quiet_libraries()
    preload_worker_imports()  # under the start-up handlers: a signal here ends the process with one line
    started = time.perf_counter()
    stop = StopSignals()
    try:
        with stop:
            exported, usage = run_recipe(recipe, build, cfg, fresh=args.fresh, progress=not args.quiet, stop=stop)
    except KeyboardInterrupt:  # before the run's stored work was opened
        print(RunStopped(stop.received or signal.SIGINT).line(recipe.output_dir(cfg)), file=sys.stderr)
        return 128 + (stop.received or signal.SIGINT)
    except (OutputDirError, ConfigError) as exc:  # ConfigError: a Ray plan the cluster cannot hold
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OutputLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except StepFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    except NotPublished as exc:
        print(exc.line(recipe.output_dir(cfg)), file=sys.stderr)
        return NOT_PUBLISHED
    except RequestsFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 7
    except RunStopped as exc:
        print(exc.line(recipe.output_dir(cfg)), file=sys.stderr)
        return exc.exit_code
    code = recipe.done(cfg, exported)
    if code:
        return code
    reused = ", ".join(f"{step} {u['reused']}/{u['reused'] + u['computed']}" for step, u in usage.items())
    print(f"  stored results reused: {reused or 'none'}")
    print(f"  wall time: {time.perf_counter() - started:.1f}s")
    return 0


def _check_instructions(source: str) -> None:
    """Read the instruction set once up front, so a bad source fails before models load."""
    from magpie_dl.run.inputs import InstructionSourceError, load_instructions

    try:
        load_instructions(source)
    except InstructionSourceError as exc:
        raise ConfigError(f"--instructions: {exc}") from None


def _ensure_tiny_models() -> None:
    """The smoke preset builds its tiny local models on first use (deterministic, offline)."""
    from magpie_dl.local import tiny
    from magpie_dl.paths import models_dir_problem

    if not tiny.is_current(TINY_DIR):
        problem = models_dir_problem(TINY_DIR)
        if problem:
            raise ConfigError(problem)
        logging.getLogger("magpie_dl").warning("building tiny local models in %s", TINY_DIR)
        tiny.ensure(TINY_DIR)


def _ensure_smollm2() -> None:
    """The demo preset's real chat model, converted once from its PyPI wheel (`make models`)."""
    from magpie_dl.local import smollm2

    if smollm2.is_current(SMOLLM2_DIR):
        return
    wheel = REPO_ROOT / ".whl" / smollm2.WHEEL_NAME
    if not wheel.is_file():
        raise ConfigError(
            f"the demo preset needs {smollm2.MODEL_ID} in {SMOLLM2_DIR}: run `make models` "
            f"(downloads the {smollm2.PACKAGE} wheel, no dependencies, and converts it)"
        )
    try:
        smollm2.ensure(wheel, SMOLLM2_DIR)
    except smollm2.ConversionError as exc:
        raise ConfigError(str(exc)) from None


__all__ = ["main_for", "output_lock", "run_recipe"]
