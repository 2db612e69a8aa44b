"""The instruction-curation recipe: config and command line.

``pipelines/magpie_instructions.py`` generates Magpie queries and curates them (tags,
language, instruct reward, near-duplicates, balanced selection). This module holds
what is around the graph: the validated config with its presets and the command line
(same conventions and run flags as the DPO recipe: ``--preset``, ``--config``, dotted
flags, ``--dry-run``, ``--fresh``, ``--quiet``, ``--verbose``). The run itself is
:func:`magpie_dl.run.driver.main_for`'s; :mod:`magpie_dl.release.curation` writes the curated
set where ``pipelines/dpo_100k.py --instructions`` reads it.

Outputs in ``--output-dir``:

- ``dataset/``: the selected instructions (``datasets.save_to_disk``), every tag column;
- ``instructions.jsonl``: the same rows as JSON lines;
- ``left_out.jsonl``: every rejected row with its ``selection_reason``;
- ``selection.json``: the selection report (drops per reason, category mix, parse failures);
- ``config.yaml``, ``pipeline.yaml``: what ran.

All of them are one release, published together when a run finishes
(:mod:`magpie_dl.run.outdir`); a stopped run publishes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from magpie_dl.config import dpo as config
from magpie_dl.config.command_line import _fields, deep_merge
from magpie_dl.config.dpo import SMOLLM2_DIR, TINY_DIR
from magpie_dl.curation.embeddings import PACKAGED_MINILM
from magpie_dl.config.scaleout import ScaleoutConfig
from magpie_dl.config.sections import (  # noqa: F401  (re-exported: the curation recipe's sections)
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
    # The preset the command line started from (not a setting): the closing hint runs the
    # DPO recipe on the same one, so a smoke run is not followed by the 70B recipe.
    _preset: str = PrivateAttr("full")

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

    def dpo_command(self, dataset: Path) -> str:
        """The DPO recipe's command line on ``dataset`` (this run's curated set), same preset."""
        preset = f" --preset {self._preset}" if self._preset in config.PRESETS and self._preset != "full" else ""
        return f"python pipelines/dpo_100k.py{preset} --instructions {dataset}"

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
            "reply_max_tokens": 48,
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

# The curation graph at full size (300K queries) with the instant stand-in at every model
# boundary (magpie_dl.backends.standin) in SmolLM2's real tokenizer: benchmarks and the
# suite's scale tier. Nothing it writes is real data (rows name the stand-in).
PRESETS["scale"] = deep_merge(
    PRESETS["smoke"],
    {
        "output_dir": "out/instructions_scale",
        "generator": {"model": str(SMOLLM2_DIR), "family": "smollm2", "num_instructions": 300_000,
                      "temperature": 0.9, "max_tokens": 1024, "batch_size": 500},
        "backend": {"kind": "standin", "max_model_len": 8192},
        "tagging": {"judge_model": str(SMOLLM2_DIR), "max_tokens": 512, "batch_size": 500},
        "reward": {"model": str(SMOLLM2_DIR), "max_length": 4096, "input_batch_size": 500},
        "instruct_reward": {"max_tokens": 4096, "batch_size": 500},
        # The reference's thresholds, on the stand-in scorer's scale (uniform in [-1, 1]).
        "selection": {"target_size": 100_000, "min_difficulty": "medium", "min_input_quality": "good",
                      "require_category": True, "min_instruct_reward": -0.5},
    },
)


def build_parser(description: str) -> argparse.ArgumentParser:
    """``--preset``, ``--config FILE``, ``--print-config``, and one flag per config field."""
    # The DPO recipe's short flags, for the settings this recipe has too (--backend, --family...).
    settings = {path for path, _ in _fields(InstructionsConfig)}
    aliases = {alias: path for alias, path in config.ALIASES.items() if path in settings}
    return config.build_parser(description, InstructionsConfig, PRESETS, {**aliases, "--output-dir": "output_dir"})


def resolve(args: argparse.Namespace) -> InstructionsConfig:
    """preset < YAML file < flags, validated; raises ConfigError with a one-line message."""
    return config.resolve(args)
