"""The instruction-curation recipe: config and command line.

``pipelines/magpie_instructions.py`` generates Magpie queries and curates them (tags,
language, instruct reward, near-duplicates, balanced selection). This module holds
what is around the graph: the validated config with its presets and the command line
(same conventions and run flags as the DPO recipe: ``--preset``, ``--config``, dotted
flags, ``--dry-run``, ``--fresh``, ``--quiet``, ``--verbose``). The run itself is
:func:`magpie_dl.runner.main_for`'s; :mod:`magpie_dl.curation_export` writes the curated
set where ``pipelines/dpo_100k.py --instructions`` reads it.

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
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from magpie_dl import config
from magpie_dl.config import TINY_DIR, BackendConfig, GeneratorConfig, RewardConfig, _Section
from magpie_dl.embeddings import PACKAGED_MINILM, REFERENCE_MODEL
from magpie_dl.scaleout import ScaleoutConfig
from magpie_dl.selection import NAMED_MIXES, SelectionConfig
from magpie_dl.tagging import DIFFICULTY_LEVELS, QUALITY_LEVELS, TAG_TASKS

# The reference's instruct-reward model. `selection.min_instruct_reward`'s default (-5) is on
# its scale; other reward models score on theirs (ArmoRM ~0.1), so -5 would filter nothing.
INSTRUCT_REWARD_MODEL = "sfairXC/FsfairX-LLaMA3-RM-v0.1"
DEFAULT_MIN_INSTRUCT_REWARD = -5.0

class TaggingConfig(_Section):
    """The LLM judge and the language detector."""

    judge_model: str = Field("meta-llama/Meta-Llama-3-8B-Instruct", description="Judge model for the tags.")
    tasks: list[str] = Field(default_factory=lambda: list(TAG_TASKS), description="Tag tasks to run.")
    max_tokens: int = Field(512, ge=16, description="Answer budget per tag task.")
    batch_size: int = Field(500, ge=1, description="Instructions per tagging batch.")
    languages: list[str] | None = Field(None, description="Languages the detector chooses among (None: all).")
    guard_model: str | None = Field(None, description="Guard model for the optional safety tag (e.g. Llama Guard).")


class InstructRewardModelConfig(RewardConfig):
    """The reward model that scores each instruction with one response (instruct reward)."""

    model: str = Field(
        INSTRUCT_REWARD_MODEL, description="Instruct-reward model (the reference's FsfairX-LLaMA3-RM)."
    )


class InstructRewardConfig(_Section):
    """Instruct reward: one response per instruction, scored by the reward model."""

    enabled: bool = Field(True, description="Score instructions with a response (else instruct_reward is None).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature of that response.")
    max_tokens: int = Field(4096, ge=1, description="Maximum tokens of that response.")
    batch_size: int = Field(500, ge=1, description="Instructions per batch.")


class DedupSection(_Section):
    """Near-duplicate detection (magpie_dl.dedup)."""

    embedding_model: str = Field(REFERENCE_MODEL, description=f"Sentence encoder; {PACKAGED_MINILM} works offline.")
    embedding_batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    device: config.Device = Field("cuda", description="Torch device of the encoder.")
    threshold: float = Field(0.05, gt=0.0, description="Squared L2 near-duplicate threshold.")
    k: int = Field(500, ge=1, description="Neighbours searched per row.")
    method: Literal["auto", "exact", "index"] = Field("auto", description="Exact search, FAISS index, or auto.")
    index_min_rows: int = Field(50_000, ge=1, description="Rows from which auto uses the index.")
    nprobe: int = Field(8, ge=1, description="IVF cells visited per query.")


class SelectionSection(_Section):
    """Thresholds and the balanced sample (magpie_dl.selection)."""

    min_difficulty: str | None = Field("medium", description="Lowest difficulty kept (null: no check).")
    min_input_quality: str | None = Field("good", description="Lowest input quality kept (null: no check).")
    min_instruct_reward: float | None = Field(
        DEFAULT_MIN_INSTRUCT_REWARD,
        description=f"Lowest instruct reward kept, on {INSTRUCT_REWARD_MODEL}'s scale (null: no check); "
        "set it explicitly for another reward.model.",
    )
    remove_duplicates: bool = Field(True, description="Drop near-duplicates.")
    languages: list[str] | None = Field(None, description="Allowed languages, e.g. EN (null: any).")
    require_safe: bool = Field(False, description="Keep only rows the guard judged safe (needs tagging.guard_model).")
    require_category: bool = Field(True, description="Drop rows without a task category (else sampled as '(missing)').")
    target_size: int | None = Field(100_000, ge=0, description="Instructions to select (null: all eligible).")
    category_mix: str | dict[str, float] = Field(
        "reference",
        description="reference (the released recipe's: 30% Information + Advice seeking, 70% the rest), "
        "uniform, natural, or weights per category.",
    )

    @field_validator("category_mix")
    @classmethod
    def _mix(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(value, str) and value not in NAMED_MIXES:
            raise ValueError(f"must be one of {', '.join(NAMED_MIXES)} or a mapping of weights per category")
        return value

    @field_validator("min_difficulty")
    @classmethod
    def _difficulty(cls, value: str | None) -> str | None:
        if value is not None and value not in DIFFICULTY_LEVELS:
            raise ValueError(f"must be one of {', '.join(DIFFICULTY_LEVELS)}")
        return value

    @field_validator("min_input_quality")
    @classmethod
    def _quality(cls, value: str | None) -> str | None:
        if value is not None and value not in QUALITY_LEVELS:
            raise ValueError(f"must be one of {', '.join(QUALITY_LEVELS)}")
        return value

    def to_selection_config(self, seed: int) -> SelectionConfig:
        return SelectionConfig.from_settings(self, seed)


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
    )


def resolve(args: argparse.Namespace) -> InstructionsConfig:
    """preset < YAML file < flags, validated; raises ConfigError with a one-line message."""
    return config.resolve(args)
