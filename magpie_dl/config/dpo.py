"""The DPO recipe's configuration: its schema, presets and command line.

The sections (:mod:`magpie_dl.config.sections`) declare every setting once, with its check; this
module joins them into :class:`RecipeConfig` and names the presets. The command line is
generated from the fields (:mod:`magpie_dl.config.command_line`): preset < YAML file < flags,
validated before any model loads, each failure one line that says what to change. The
names other modules import from here (the sections, ``ConfigError``, ``build_parser``...)
are re-exported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from magpie_dl.config import command_line
from magpie_dl.config.command_line import ConfigError, _fields, deep_merge, load_yaml  # noqa: F401  (re-exported)
from magpie_dl.config.estimate import EstimateConfig
from magpie_dl.paths import SMOLLM2_DIR, TINY_DIR  # noqa: F401  (re-exported)
from magpie_dl.config.scaleout import ScaleoutConfig
from magpie_dl.config.sections import (  # noqa: F401  (re-exported)
    DTYPES, BackendConfig, Device, DType, GeneratorConfig, ModelRef, OptionalModelRef, OutputConfig,
    PairingConfig, ResponsesConfig, RewardConfig, _Section,
)

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout (tests, the wheel cache)


class RecipeConfig(_Section):
    """The whole Magpie DPO recipe."""

    # Settings of the shared sections that only the curation recipe uses: not in this
    # recipe's --help, refused in its config files.
    other_recipes_settings: ClassVar[tuple[str, ...]] = ("scaleout.tagging_replicas",)

    seed: int = Field(42, description="Run seed: every row's sampling seed and the split derive from it.")
    instructions: str | None = Field(
        None, description="Start from this instruction set (dataset dir, .jsonl/.json/.parquet/.csv, hub id) "
        "instead of generating queries."
    )
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    scaleout: ScaleoutConfig = Field(default_factory=ScaleoutConfig)

    @property
    def cache_dir(self) -> Path:
        """Where durable results of this output directory live."""
        return Path(self.output.dir) / "cache"

    @property
    def response_model(self) -> str:
        return self.responses.model or self.generator.model

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data (it holds no secrets by design)."""
        return json.loads(self.model_dump_json())


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "smoke": {
        "generator": {
            "model": str(TINY_DIR / "generator"),
            "num_instructions": 96,
            "temperature": 1.0,
            "max_tokens": 48,
            "batch_size": 96,
            "reply_max_tokens": 64,
        },
        "responses": {"max_tokens": 64, "batch_size": 96},
        "reward": {
            "model": str(TINY_DIR / "reward"),
            "max_length": 512,
            "dtype": "float32",
            "device": "cpu",
            "batch_tokens": 1024,
            "input_batch_size": 96,
        },
        "backend": {
            "kind": "transformers",
            "device": "cpu",
            "dtype": "float32",
            "tensor_parallel_size": 1,
            "max_model_len": 1024,
            "transformers_batch_size": 160,
        },
        "output": {"dir": "out/smoke", "test_fraction": 0.02},
    },
}

# Short flags for the knobs people touch most: alias -> dotted field path.
ALIASES: dict[str, str] = {
    "--output-dir": "output.dir",
    "--instructions": "instructions",
    "--argilla-dataset": "output.argilla_dataset",
    "--backend": "backend.kind",
    "--base-url": "backend.base_urls",
    "--allow-failed-requests": "backend.allow_failed_requests",
    "--push-to-hub": "output.push_to_hub",
    "--num-instructions": "generator.num_instructions",
    "--family": "generator.family",
    "--trust-remote-code": "reward.trust_remote_code",
    "--ray": "scaleout.ray",
    "--gpus-per-node": "scaleout.gpus_per_node",
    "--nodes": "scaleout.nodes",
}


# ArmoRM-layout model scores them (no real reward model can be had offline).
PRESETS["demo"] = deep_merge(
    PRESETS["smoke"],
    {
        "generator": {
            "model": str(SMOLLM2_DIR),
            "family": "smollm2",
            "num_instructions": 32,
            "temperature": 0.9,
            "max_tokens": 96,
            "batch_size": 32,
            "reply_max_tokens": 320,
        },
        "responses": {"max_tokens": 320, "batch_size": 32},
        "reward": {"input_batch_size": 32},
        "backend": {"max_model_len": 2048, "transformers_batch_size": 160},
        "output": {"dir": "out/demo"},
    },
)

# The recipe's graph at full size with the instant stand-in at every model boundary
# (magpie_dl.backends.standin), writing in SmolLM2's real tokenizer: for benchmarks and the
# suite's scale tier. Sampling, lengths and batch sizes are the real recipe's; nothing it
# writes is real data (the rows and the card name the stand-in).
PRESETS["scale"] = deep_merge(
    PRESETS["smoke"],
    {
        "generator": {
            "model": str(SMOLLM2_DIR),
            "family": "smollm2",
            "num_instructions": 100_000,
            "temperature": 0.9,
            "max_tokens": 1024,
            "batch_size": 500,
        },
        "responses": {"max_tokens": 4096, "batch_size": 500},
        "reward": {"model": str(SMOLLM2_DIR), "max_length": 4096, "input_batch_size": 500},
        "backend": {"kind": "standin", "max_model_len": 8192},
        "output": {"dir": "out/scale"},
    },
)


def build_parser(
    description: str,
    schema: type[BaseModel] = RecipeConfig,
    presets: dict[str, dict[str, Any]] = PRESETS,
    aliases: dict[str, str] = ALIASES,
    run_flags: bool | tuple[str, ...] = True,
) -> argparse.ArgumentParser:
    """The recipe's parser (see :func:`magpie_dl.config.command_line.build_parser`); the DPO recipe's by default."""
    return command_line.build_parser(description, schema, presets, aliases, run_flags)


def resolve(args: argparse.Namespace) -> Any:
    """preset < YAML file < flags, validated against the parser's schema; one-line ConfigError."""
    return command_line.resolve(args)


def validate(data: dict[str, Any], schema: type[BaseModel] = RecipeConfig) -> Any:
    """``data`` as a ``schema`` instance (the DPO recipe's by default); one-line ConfigError."""
    return command_line.validate(data, schema)
