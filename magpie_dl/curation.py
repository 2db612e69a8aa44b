"""The instruction-curation recipe: config, command line and outputs.

``pipelines/magpie_instructions.py`` generates Magpie queries and curates them (tags,
language, instruct reward, near-duplicates, balanced selection). This module holds
what is around the graph: the validated config with its presets, the command line
(same conventions as the DPO recipe: ``--preset``, ``--config``, dotted flags), and
writing the curated set where ``pipelines/dpo_100k.py --instructions`` reads it.

Outputs in ``--output-dir``:

- ``dataset/``: the selected instructions (``datasets.save_to_disk``), every tag column;
- ``instructions.jsonl``: the same rows as JSON lines;
- ``left_out.jsonl``: every rejected row with its ``selection_reason``;
- ``selection.json``: the selection report (drops per reason, category mix, parse failures);
- ``config.yaml``, ``pipeline.yaml``: what ran.

All of them are one release, published together when a run finishes
(:mod:`magpie_dl.outdir`); a stopped run publishes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from magpie_dl import config
from magpie_dl.config import TINY_DIR, ConfigError
from magpie_dl.embeddings import PACKAGED_MINILM
from magpie_dl.scaleout_config import ScaleoutConfig
from magpie_dl.sections import (  # noqa: F401  (re-exported: the curation recipe's sections)
    DEFAULT_MIN_INSTRUCT_REWARD,
    INSTRUCT_REWARD_MODEL,
    BackendConfig,
    DedupSection,
    GeneratorConfig,
    InstructRewardConfig,
    InstructRewardModelConfig,
    SelectionSection,
    TaggingConfig,
    _Section,
)
from magpie_dl.selection import SelectionReport


class InstructionsConfig(_Section):
    """The whole instruction-curation recipe."""

    seed: int = Field(42, description="Run seed: generation seeds and the selection sample derive from it.")
    output_dir: Path = Field(Path("out/instructions"), description="Output directory.")
    generator: GeneratorConfig = Field(default_factory=lambda: GeneratorConfig(num_instructions=300_000))
    backend: BackendConfig = Field(default_factory=BackendConfig)
    tagging: TaggingConfig = Field(default_factory=TaggingConfig)
    reward: InstructRewardModelConfig = Field(default_factory=InstructRewardModelConfig)
    instruct_reward: InstructRewardConfig = Field(default_factory=InstructRewardConfig)
    dedup: DedupSection = Field(default_factory=DedupSection)
    selection: SelectionSection = Field(default_factory=SelectionSection)
    scaleout: ScaleoutConfig = Field(default_factory=ScaleoutConfig)

    @model_validator(mode="after")
    def _safety_needs_a_guard(self) -> "InstructionsConfig":
        if self.selection.require_safe and not self.tagging.guard_model:
            raise ValueError("selection.require_safe needs tagging.guard_model")
        return self

    @model_validator(mode="after")
    def _threshold_on_the_models_scale(self) -> "InstructionsConfig":
        # -5 means something only on the reference model's scale: another model needs its own.
        threshold_given = "min_instruct_reward" in self.selection.model_fields_set
        if self.instruct_reward.enabled and self.reward.model != INSTRUCT_REWARD_MODEL and not threshold_given:
            raise ValueError(
                f"the default selection.min_instruct_reward ({DEFAULT_MIN_INSTRUCT_REWARD}) is on "
                f"{INSTRUCT_REWARD_MODEL}'s scale; with reward.model {self.reward.model} set "
                "--selection.min_instruct_reward VALUE (or null: no check)"
            )
        return self

    @property
    def cache_dir(self) -> Path:
        return Path(self.output_dir) / "cache"

    def public_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    # Tiny local models end to end on CPU. The tiny judge does not write valid JSON over
    # the transformers backend (every failure is counted in selection.json), so the smoke
    # selection does not require the judge's tags; dedup, instruct reward and sampling
    # still apply. With `--backend.kind vllm` structured outputs constrain the judge.
    "smoke": {
        "output_dir": "out/instructions_smoke",
        "generator": {
            "model": str(TINY_DIR / "generator"),
            "num_instructions": 64,
            "temperature": 1.0,
            "max_tokens": 48,
            "batch_size": 64,
        },
        "backend": {"kind": "transformers", "device": "cpu", "dtype": "float32", "tensor_parallel_size": 1,
                    "max_model_len": 1024, "transformers_batch_size": 160},
        "tagging": {"judge_model": str(TINY_DIR / "generator"), "max_tokens": 64, "batch_size": 64,
                    "languages": ["en", "de", "fr", "es", "zh"]},
        "reward": {"model": str(TINY_DIR / "reward"), "max_length": 512, "dtype": "float32", "device": "cpu",
                   "batch_tokens": 1024, "input_batch_size": 64},
        "instruct_reward": {"max_tokens": 48, "batch_size": 64},
        "dedup": {"embedding_model": PACKAGED_MINILM, "device": "cpu"},
        # The tiny reward model's scale is its own: the threshold is set explicitly (a
        # threshold on another model's scale must be), at a value that keeps the check in.
        "selection": {"target_size": 32, "min_difficulty": None, "min_input_quality": None,
                      "require_category": False, "min_instruct_reward": DEFAULT_MIN_INSTRUCT_REWARD},
    },
}


def build_parser(description: str) -> argparse.ArgumentParser:
    """``--preset``, ``--config FILE``, ``--print-config``, and one flag per config field."""
    return config.build_parser(
        description, InstructionsConfig, PRESETS, {"--output-dir": "output_dir", "--ray": "scaleout.ray"},
        run_flags=("fresh", "dry_run"),
    )


def resolve(args: argparse.Namespace) -> InstructionsConfig:
    """preset < YAML file < flags, validated; raises ConfigError with a one-line message."""
    return config.resolve(args)


def split_selected(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(selected, rejected) by ``selection_reason``, each sorted by uuid.

    Rows reach the end of the pipeline in the order their batches finished (on Ray,
    whichever replica was first); sorting makes the files independent of the layout.
    """
    rows = sorted(rows, key=lambda row: row["uuid"])
    selected = [r for r in rows if r.get("selection_reason") is None]
    rejected = [r for r in rows if r.get("selection_reason") is not None]
    return selected, rejected


def write_outputs(rows: list[dict[str, Any]], out_dir: Path) -> tuple[int, int]:
    """Write the curated set (``dataset/`` and ``instructions.jsonl``) and ``left_out.jsonl``."""
    from datasets import Dataset

    selected, rejected = split_selected(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("instructions.jsonl", selected), ("left_out.jsonl", rejected)):
        with (out_dir / name).open("w", encoding="utf-8") as handle:  # "w": a rerun replaces, never appends
            for row in part:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    if selected:
        Dataset.from_list(selected).save_to_disk(str(out_dir / "dataset"))
    return len(selected), len(rejected)


def main_for(build: Any, description: str, argv: list[str] | None = None) -> int:
    """The command line of the curation recipe; returns the exit code."""
    import os
    import shutil
    import signal

    from magpie_dl import outdir
    from magpie_dl.export import discard_loaded_copy
    from magpie_dl.outdir import OutputDirError
    from magpie_dl.preflight import check_before_run
    from magpie_dl.procs import die_with_parent, own_process_group, preload_worker_imports
    from magpie_dl.runner import (
        OutputLockedError, _ensure_tiny_models, claimed_output, prepare, print_plan, recipe_name, run_pipeline,
    )
    from magpie_dl.step_errors import StepFailedError
    from magpie_dl.stopping import RunStopped, StopSignals

    # distilabel's rich excepthook prints every frame's locals (tokens, keys): Python's own instead.
    sys.excepthook = sys.__excepthook__
    args = build_parser(description).parse_args(argv)
    recipe = recipe_name(build)
    try:
        if args.preset == "smoke":
            _ensure_tiny_models()
        cfg = resolve(args)
        if not (args.print_config or args.dry_run):
            outdir.check_output_dir(cfg.output_dir, recipe)
            check_before_run(cfg)  # devices, hub models
    except (ConfigError, OutputDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.public_dict(), sort_keys=False), end="")
        return 0
    if args.dry_run:
        print_plan(build(cfg), cfg)
        return 0
    preload_worker_imports()  # under the start-up handlers: a signal here ends the process with one line
    started = time.perf_counter()
    try:
        with StopSignals() as stop, claimed_output(cfg.output_dir, recipe) as out_dir:
            try:
                if args.fresh:
                    shutil.rmtree(cfg.cache_dir, ignore_errors=True)
                os.register_at_fork(after_in_child=die_with_parent)
                os.register_at_fork(after_in_child=own_process_group)
                pipeline = prepare(build, cfg, outdir.start_in_progress(out_dir))
                output = run_pipeline(pipeline, cfg.generator.num_instructions, stop)
                with outdir.release(out_dir) as release:
                    n_selected, n_rejected = write_outputs(output.to_list(), release.path)
                    discard_loaded_copy(output)
                    release.add_in_progress()  # config.yaml, pipeline.yaml, selection.json
                    with stop.deferred():  # a signal now is too late: the whole release lands
                        release.publish()
            except KeyboardInterrupt:
                raise RunStopped(stop.received or signal.SIGINT) from None
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
        print(exc.line(cfg.output_dir), file=sys.stderr)
        return exc.exit_code
    report_path = out_dir / "selection.json"
    print(f"\ncurated instructions: {out_dir / 'dataset'} ({n_selected} rows; {n_rejected} in left_out.jsonl)")
    if report_path.exists():
        report = SelectionReport(**json.loads(report_path.read_text()))
        print("  " + report.format().replace("\n", "\n  "))
    print(f"  next: python pipelines/dpo_100k.py --instructions {out_dir / 'dataset'}")
    print(f"  wall time: {time.perf_counter() - started:.1f}s")
    return 0
