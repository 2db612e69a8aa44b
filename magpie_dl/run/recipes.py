"""The two recipes as the command line runs them: what differs between them, as data.

:func:`magpie_dl.run.driver.main_for` is the one driver (flags, checks before any model
loads, the output directory's lock, signals, progress, the release, exit codes); a
:class:`Recipe` says what is the recipe's own: its command line, where a config
writes, what it reads, how its rows become its release, what ``--dry-run`` estimates
and what a finished run prints.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from magpie_dl.config import dpo as config

from magpie_dl.config import curation
from magpie_dl.config.dpo import ConfigError
from magpie_dl.release.curation import write_outputs
from magpie_dl.config.estimate import estimate
from magpie_dl.release.export import Summary, write_dataset
from magpie_dl.release.push import push_for_hub, push_for_review
from magpie_dl.recipe.provenance import stand_in_engine_note, stand_in_reward_note
from magpie_dl.reward import armorm
from magpie_dl.reward.columns import ReleasedScores, released_scores
from magpie_dl.release.report import example_lines, input_config_counts, models_of, write_card_and_report
from magpie_dl.release.report.curation import write_curation_card_and_report
from magpie_dl.run.store import ResultStore
from magpie_dl.curation.selection import SelectionReport

if TYPE_CHECKING:
    from datasets import Dataset

    from magpie_dl.config.dpo import RecipeConfig
    from magpie_dl.config.curation import InstructionsConfig


def local_models_named(preset: Mapping[str, Any]) -> list[Path]:
    """The local model folders (:data:`~magpie_dl.config.dpo.TINY_DIR`, then
    :data:`~magpie_dl.config.dpo.SMOLLM2_DIR`) a preset's config names a model in: the driver
    builds them before the run, so a preset needs no setup step."""
    named: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            named.append(value)

    walk(preset)
    return [folder for folder in (config.TINY_DIR, config.SMOLLM2_DIR)
            if any(Path(value) == folder or Path(value).is_relative_to(folder) for value in named)]


def _reads_nothing(cfg: Any) -> None:
    return None


def _no_checks(cfg: Any) -> None:
    return None


@dataclass(frozen=True)
class Recipe:
    """What :func:`magpie_dl.run.driver.main_for` needs to know about one recipe.

    Every callable takes the recipe's validated config (``cfg``) first.

    Attributes:
        name: the recipe's script name (``dpo_100k``); an output directory's marker records it.
        parser: its command line from a description: ``--preset``, ``--config``, one flag per
            config field, and the run flags (``--fresh``, ``--dry-run``, ``--quiet``, ``--verbose``).
        output_dir: where a config's run writes (``--output-dir``).
        export: ``(cfg, rows, staging, shown_as)`` writes the release from the run's rows
            (memory-mapped Arrow, streamed) into ``staging``, which already holds
            ``config.yaml`` and ``pipeline.yaml``; ``shown_as`` is where it will be published.
            Returns what ``done`` reports.
        done: ``(cfg, exported)`` prints what a finished run made and does its pushes;
            returns the exit code (0, or 4 when a push failed).
        estimate: ``(cfg, instructions)`` the lines ``--dry-run`` prints after the graph and config.
        instructions: the instruction set a config reads (``None``: the run writes its own queries).
        check: a recipe's own checks before any model loads; raises ``ConfigError``.
        gpu_hours: ``(cfg, instructions)`` GPU-hours by kind of work (``queries``,
            ``responses``, ``reward``) for the plan's per-stage hours; None when not estimated.
    """

    name: str
    parser: Callable[[str], argparse.ArgumentParser]
    output_dir: Callable[[Any], Path]
    export: Callable[[Any, Dataset, Path, Path], Any]
    done: Callable[[Any, Any], int]
    estimate: Callable[[Any, int], list[str]]
    instructions: Callable[[Any], str | None] = _reads_nothing
    check: Callable[[Any], None] = _no_checks
    gpu_hours: Callable[[Any, int], dict[str, float]] | None = None


# --------------------------------------------------------------------------- the DPO recipe


def run_timings(cache_dir: Path | str, staging: Path) -> dict[str, Any]:
    """Seconds from the run's start (when its ``config.yaml`` was written, before any step ran)
    to its export (``run_s``), and per step to its first and last counted result."""
    started = (staging / "config.yaml").stat().st_mtime
    steps = {step: {"first_result_s": round(first - started, 1), "last_result_s": round(last - started, 1)}
             for step, (first, _, _, last) in sorted(ResultStore(cache_dir).progress_times().items())}
    return {"run_s": round(time.time() - started, 1), "steps": steps}


def released_scores_of(cfg: RecipeConfig) -> ReleasedScores:
    """The run's released score columns: ArmoRM's names when it scored with ArmoRM (or with the
    stand-in, which imitates the recipe's release), the model-neutral ones otherwise."""
    armorm_layout = cfg.backend.kind == "standin" or armorm.is_armorm_model(cfg.reward.model)
    return released_scores(armorm_layout)


def _dpo_export(cfg: RecipeConfig, rows: Dataset, staging: Path, shown_as: Path) -> Summary:
    public = cfg.public_dict()
    writers = input_config_counts([rows], "input_generator")
    summary = write_dataset(rows, staging, cfg.output.test_fraction, cfg.seed,
                            models=models_of(public, [name for name, _ in writers.most_common()]),
                            timings=run_timings(cfg.cache_dir, staging), scores=released_scores_of(cfg))
    write_card_and_report(staging, public, summary, shown_as=shown_as)
    return summary


def _dpo_done(cfg: RecipeConfig, summary: Summary) -> int:
    out_dir = Path(cfg.output.dir)
    print(f"\ndataset: {out_dir / 'dataset'}  (pipeline.yaml, left_out/, summary.json, README.md, report.html beside it)")
    for line in summary.lines():
        print(f"  {line}")
    for note in (stand_in_engine_note(cfg.public_dict()), stand_in_reward_note(cfg.reward.model)):
        if note:
            print(f"  note: {note}")
    for line in example_lines(out_dir):
        print(f"  {line}")
    if cfg.output.push_to_hub and not push_for_hub(cfg):
        return 4
    if cfg.output.argilla_dataset and not push_for_review(cfg):
        return 4
    return 0


def _dpo_estimate(cfg: RecipeConfig, instructions: int) -> list[str]:
    work = estimate(instructions, cfg.responses.num_generations, not cfg.instructions, cfg.estimate, cfg.generator.num_turns)
    return ["estimate (assumptions under `estimate:` above; set them with --estimate.*):",
            *(f"  {line}" for line in work.lines())]


def _dpo_gpu_hours(cfg: RecipeConfig, instructions: int) -> dict[str, float]:
    return estimate(instructions, cfg.responses.num_generations, not cfg.instructions, cfg.estimate, cfg.generator.num_turns).hours_by_work()


def _dpo_check(cfg: RecipeConfig) -> None:
    if cfg.reward.engine == "vllm" and armorm.is_armorm_model(cfg.reward.model):
        raise ConfigError(f"--reward.engine vllm: {cfg.reward.model} is ArmoRM, which vLLM does not serve; "
                          "use --reward.engine transformers (the default)")
    if cfg.reward.base_urls and cfg.reward.engine != "vllm":
        raise ConfigError("--reward.base_urls are vllm serve --runner pooling endpoints: add --reward.engine vllm")
    if cfg.output.argilla_dataset and not (os.environ.get("ARGILLA_API_URL") and os.environ.get("ARGILLA_API_KEY")):
        raise ConfigError("--argilla-dataset needs ARGILLA_API_URL and ARGILLA_API_KEY in the environment")


DPO_100K = Recipe(
    name="dpo_100k",
    parser=config.build_parser,
    output_dir=lambda cfg: cfg.output.dir,
    export=_dpo_export,
    done=_dpo_done,
    estimate=_dpo_estimate,
    instructions=lambda cfg: cfg.instructions,
    check=_dpo_check,
    gpu_hours=_dpo_gpu_hours,
)


# --------------------------------------------------------------------------- the curation recipe


class Curated(NamedTuple):
    """What a curation run published: row counts, and where."""

    selected: int
    rejected: int
    out_dir: Path


def _curation_export(cfg: InstructionsConfig, rows: Dataset, staging: Path, shown_as: Path) -> Curated:
    selected, rejected = write_outputs(rows, staging)
    write_curation_card_and_report(staging, cfg.public_dict(), selected, rejected)
    return Curated(selected, rejected, shown_as)


def _curation_done(cfg: InstructionsConfig, curated: Curated) -> int:
    selected, rejected, out_dir = curated
    print(f"\ncurated instructions: {out_dir / 'dataset'} ({selected} rows; {rejected} in left_out.jsonl; "
          "README.md and report.html beside them)")
    report_path = out_dir / "selection.json"
    if report_path.exists():
        report = SelectionReport(**json.loads(report_path.read_text()))
        print("  " + report.format().replace("\n", "\n  "))
    print(f"  next: {cfg.dpo_command(out_dir / 'dataset')}")
    return 0


def _curation_estimate(cfg: InstructionsConfig, instructions: int) -> list[str]:
    # Counts only: no token or GPU-hour figures, as nothing models the judge's or the encoder's throughput.
    n, tasks = instructions, len(cfg.tagging.tasks)
    turns = cfg.generator.num_turns
    lines = [f"query prompts: {n * turns:,}" + (f" ({turns} user turns per conversation)" if turns > 1 else "")]
    if turns > 1:
        lines.append(f"replies: up to {n * turns:,} (one to every turn, max {cfg.generator.reply_max_tokens:,} tokens)")
    first = ", on its first turn" if turns > 1 else ""
    lines.append(f"judge requests: up to {n * tasks:,} ({tasks} tag tasks per usable query{first})")
    if cfg.tagging.guard_model:
        lines.append(f"guard requests: up to {n:,}")
    if cfg.instruct_reward.enabled:
        lines.append(f"instruct responses: up to {n:,} (1 each, max {cfg.instruct_reward.max_tokens:,} tokens), "
                     f"scored by {cfg.reward.model}")
    lines.append(f"instructions embedded: up to {n:,} ({cfg.dedup.embedding_model})")
    target = cfg.selection.target_size
    lines.append(f"selected: up to {target:,}" if target is not None else "selected: every eligible instruction")
    return ["estimate (counts of work only; no token or GPU-hour figures for this recipe):",
            *(f"  {line}" for line in lines)]


MAGPIE_INSTRUCTIONS = Recipe(
    name="magpie_instructions",
    parser=curation.build_parser,
    output_dir=lambda cfg: cfg.output_dir,
    export=_curation_export,
    done=_curation_done,
    estimate=_curation_estimate,
)
