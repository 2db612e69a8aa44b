"""The config sections: every setting of both recipes, declared once, with its check.

A section is one step's (or one concern's) settings: ``generator``, ``responses``,
``reward``, ``tagging``, ``dedup``, ``selection``... The recipes' whole configs
(:class:`magpie_dl.config.dpo.RecipeConfig`, :class:`magpie_dl.config.curation.InstructionsConfig`)
are made of them, and every configurable step takes its section whole
(``RewardScoring.from_config(cfg.reward, ...)``).

A setting is declared once, with its default, description and bounds, in the model that
owns it: a section here, or a library config (:mod:`magpie_dl.curation.dedup`,
:mod:`magpie_dl.curation.selection`). Another model that exposes the same knob (a step's
runtime parameter, a section over a library config) declares its field as
``setting(Owner, "name")`` instead of repeating it::

    class MultiResponseGeneration(StreamingStep):
        temperature: RuntimeParameter[float] = setting(ResponsesConfig, "temperature")

The new field keeps its own annotation and takes the owner's default (or default factory),
description and numeric bounds; validators in the owner's annotation (a model path's
existence check) are not carried over.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from magpie_dl.config.command_line import Choices
from magpie_dl.curation.dedup import DedupConfig, SearchMethod
from magpie_dl.curation.embeddings import PACKAGED_MINILM, REFERENCE_MODEL
from magpie_dl.templates.families import FAMILIES
from magpie_dl.recipe.pairing import MIN, REJECTED_POLICIES
from magpie_dl.recipe.queries import CONTROL_TASKS
from magpie_dl.templates.prompts import DEFAULT_TEMPLATE_DATE
from magpie_dl.curation.selection import SelectionRules
from magpie_dl.curation.tagging import TAG_TASKS, TagTaskNames


# Numeric bounds: pydantic keeps each as a metadata object with an attribute of its name (``Ge(ge=0)``).
_BOUNDS = ("gt", "ge", "lt", "le")


def setting(owner: type[BaseModel], name: str, **overrides: Any) -> Any:
    """A field declared as ``owner``'s field ``name``: same default, description and bounds.

    ``overrides`` change what must differ, with a reason at the call: ``default=`` (a
    standalone step's default where the recipe's would not suit, e.g. ``device="cpu"``),
    a bound (``ge=1``), or ``None`` to drop a bound.
    """
    info = owner.model_fields[name]
    spec: dict[str, Any] = {
        key: getattr(meta, key) for meta in info.metadata for key in _BOUNDS if getattr(meta, key, None) is not None
    }
    spec["description"] = info.description
    if info.default_factory is not None and "default" not in overrides:
        spec["default_factory"] = info.default_factory
    else:
        spec["default"] = info.default
    spec.update(overrides)
    return Field(**{key: value for key, value in spec.items() if value is not None or key == "default"})


class _Section(BaseModel):
    """A config section: an unknown key is an error (a typo), and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check_model_ref(value: str) -> str:
    """A model is a local model directory (with a ``config.json``) or a hub id ``org/name``.

    Whether a hub id can be fetched (offline, no network) is checked before the run
    (:func:`magpie_dl.run.preflight.check_model_sources`), not here: this runs for
    ``--print-config`` too.
    """
    if not value or not value.strip():
        raise ValueError("model must not be empty")
    path = Path(value).expanduser()
    looks_local = value.startswith((".", "/", "~")) or value.count("/") != 1
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model path {value!r} is a file; give the model's directory")
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {value!r} has no config.json; give a directory saved by save_pretrained")
    elif looks_local:
        raise ValueError(f"model path {value!r} does not exist (build tiny models with `make models`)")
    return value


def _check_dtype(value: str) -> str:
    if value not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; use one of: {', '.join(DTYPES)}")
    return value


_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def _check_device(value: str) -> str:
    """The device's spelling; whether this machine has it is checked before the run."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"unknown device {value!r}; use cpu, cuda, cuda:N or mps")
    return value


# Field types that carry their check: every section declaring a model, dtype or device
# validates it the same way.
ModelRef = Annotated[str, AfterValidator(_check_model_ref)]
# Annotated outside the union, so the field's annotation stays `str | None` (a flag's text is kept as is).
OptionalModelRef = Annotated[str | None, AfterValidator(lambda value: None if value is None else _check_model_ref(value))]
DType = Annotated[str, AfterValidator(_check_dtype), Choices(DTYPES)]
Device = Annotated[str, AfterValidator(_check_device)]


def _check_family(value: str) -> str:
    if value != "auto" and value not in FAMILIES:
        raise ValueError(f"unknown family {value!r}; use auto or one of: {', '.join(FAMILIES)}")
    return value


class GeneratorConfig(_Section):
    """Magpie query synthesis."""

    model: ModelRef = Field("meta-llama/Llama-3.1-70B-Instruct", description="Aligned chat model that writes the queries.")
    family: str = Field("auto", description=f"Chat-template family: auto or one of {', '.join(FAMILIES)}.")
    num_instructions: int = Field(100_000, ge=1, description="How many queries to write.")
    temperature: float = Field(0.9, ge=0.0, le=2.0, description="Query sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Query nucleus sampling mass.")
    max_tokens: int = Field(1024, ge=1, description="Maximum tokens per query.")
    system_prompt: str | None = Field(None, description="One fixed system prompt for every query.")
    control_task: Annotated[str | None, Choices(CONTROL_TASKS)] = Field(None, description=f"Built-in system prompt: {', '.join(CONTROL_TASKS)}.")
    system_prompts: dict[str, tuple[str | None, float]] | None = Field(
        None, description="Weighted system-prompt categories, {name: [prompt or null, weight]} (YAML)."
    )
    ban_first_token_markdown: bool = Field(True, description="Ban markdown tokens at a query's first position.")
    stop_at_newline: bool | None = Field(
        None, description="Stop queries at their first newline (the reference's early stop); null: the "
        "family's default (on for llama-3, qwen2, qwen2.5, phi-3, mistral-v0.3; off for the others)."
    )
    batch_size: int = Field(1000, ge=1, description="Queries per batch sent to the engine.")
    num_turns: int = Field(
        1, ge=1, le=8, description="User turns per conversation: each later one follows up on the model's reply "
        "to the one before (the DPO recipe pairs responses to the last)."
    )
    # Greedy, as the reference's multi-turn script: the history is conditioning, not data to
    # choose between; one most-likely reply per turn keeps conversations reproducible, and the
    # sampled variety belongs to the last turn's responses.
    reply_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Temperature of the one reply to each earlier turn.")
    reply_max_tokens: int = Field(4096, ge=1, description="Maximum tokens of the reply to each earlier turn.")

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        return _check_family(value)

    @model_validator(mode="after")
    def _one_system_prompt_source(self) -> GeneratorConfig:
        given = [self.system_prompt is not None, self.control_task is not None, bool(self.system_prompts)]
        if sum(given) > 1:
            raise ValueError("give only one of system_prompt, control_task or system_prompts")
        if self.system_prompts and any(not weight > 0 for _, weight in self.system_prompts.values()):
            raise ValueError("system_prompts weights must be > 0")
        return self

    @field_validator("control_task")
    @classmethod
    def _known_task(cls, value: str | None) -> str | None:
        if value is not None and value not in CONTROL_TASKS:
            raise ValueError(f"unknown control task {value!r}; use one of: {', '.join(CONTROL_TASKS)}")
        return value


class ResponsesConfig(_Section):
    """Multi-generation of responses."""

    model: OptionalModelRef = Field(None, description="Response model; defaults to the generator's model.")
    num_generations: int = Field(5, ge=2, description="Responses per instruction (at least 2 to make a pair).")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Response sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Response nucleus sampling mass.")
    max_tokens: int = Field(4096, ge=1, description="Maximum tokens per response.")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="Response repetition penalty (vLLM's; 1.0 = none, as in the recipe)."
    )
    prompt_style: Literal["chat_template", "magpie"] = Field(
        "magpie", description="magpie (the released rows' bare prompt, no system block) or chat_template (model's own)."
    )
    thinking: bool = Field(
        False, description="Thinking on for models with a switch (Qwen3): the think block goes to `reasoning`, "
        "unscored; off by default."
    )
    batch_size: int = Field(500, ge=1, description="Instructions per batch sent to the engine.")


class RewardConfig(_Section):
    """Reward scoring."""

    model: ModelRef = Field("RLHFlow/ArmoRM-Llama3-8B-v0.1", description="Reward model (ArmoRM in the recipe).")
    max_length: int = Field(4096, ge=8, description="Inputs are cut to this many tokens.")
    batch_size: int = Field(64, ge=1, description="Most sequences per forward pass.")
    batch_tokens: int = Field(
        32768, ge=1, description="Most padded tokens (sequences x longest) per forward pass; ~1024 suits a CPU."
    )
    dtype: DType = Field("bfloat16", description="auto | float32 | bfloat16 | float16")
    device: Device = Field("cuda", description="Torch device for the reward model.")
    trust_remote_code: bool = Field(
        False,
        description="Opt in to running a reward model's own code, for architectures not implemented here "
        "(ArmoRM is: it never needs this).",
    )
    input_batch_size: int = Field(500, ge=1, description="Rows per batch handed to the scoring step.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers | vllm: vLLM's pooling runner (classify task), for one-label "
        "sequence classifiers; ArmoRM runs on transformers only."
    )
    base_urls: list[str] = Field(
        default_factory=list, description="vllm engine: `vllm serve --runner pooling` URLs to score on (their "
        "/classify API); none: an in-process engine."
    )


class BackendConfig(_Section):
    """Where generation runs."""

    kind: Literal["transformers", "vllm", "openai", "standin"] = Field(
        "vllm", description="transformers | vllm | openai | standin; standin is an instant stand-in for every "
        "model, for scale runs and tests, never real data."
    )
    base_urls: list[str] = Field(default_factory=list, description="vLLM server URLs for --backend openai.")
    device: Device = Field("cuda", description="Torch device for the transformers backend.")
    dtype: DType = Field("bfloat16", description="Model dtype: auto | float32 | bfloat16 | float16")
    tensor_parallel_size: int = Field(8, ge=1, description="vLLM: GPUs per engine.")
    max_model_len: int | None = Field(8192, description="vLLM: context length.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vLLM: fraction of GPU memory.")
    enable_prefix_caching: bool = Field(True, description="vLLM: reuse the shared pre-query prefix.")
    transformers_batch_size: int = Field(64, ge=1, description="transformers: completions per forward pass.")
    standin_seconds_per_prompt: float = Field(
        0.0, ge=0.0, description="standin: pause per prompt, to give a run a slow engine's duration (0: instant)."
    )
    chat_template_date: date = Field(
        date.fromisoformat(DEFAULT_TEMPLATE_DATE),
        description="Date chat templates render as today (Llama 3.1+); pinned so a resumed run builds the same prompts.",
    )
    # Serving (--backend openai): retries, timeouts and liveness of `vllm serve` endpoints.
    max_concurrency: int = Field(64, ge=1, description="openai: requests in flight across all endpoints.")
    max_retries: int = Field(4, ge=0, description="openai: retries of one request after a transient failure.")
    backoff_s: float = Field(0.5, ge=0.0, description="openai: first retry delay in seconds; doubles each retry, capped at 30.")
    connect_timeout_s: float = Field(10.0, gt=0.0, description="openai: seconds to open a connection.")
    request_timeout_s: float = Field(
        900.0, gt=0.0, description="openai: longest one request may take, however live its server (seconds)."
    )
    stall_timeout_s: float = Field(
        60.0, gt=0.0, description="openai: a request unanswered this long has its endpoint probed; one that does "
        "not answer is set aside and the request retried elsewhere (seconds)."
    )
    probe_timeout_s: float = Field(5.0, gt=0.0, description="openai: seconds a probe (GET /v1/models) may take.")
    probe_interval_s: float = Field(2.0, gt=0.0, description="openai: seconds between probes of a set-aside endpoint.")
    restart_grace_s: float = Field(
        120.0, ge=0.0, description="openai: seconds requests wait for an endpoint to come back when every "
        "endpoint is set aside (a server restart) before they fail."
    )
    allow_failed_requests: bool = Field(
        False, description="Publish what succeeded although some requests failed after their retries "
        "(counted in the summary and the card); by default such a run publishes nothing and exits 7."
    )

    @model_validator(mode="after")
    def _urls_for_openai(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_urls:
            raise ValueError("backend openai needs --base-url URL[,URL...]")
        return self


class PairingConfig(_Section):
    """Pairing: chosen = the highest score; rejected by a policy (rules: :mod:`magpie_dl.recipe.pairing`)."""

    min_margin: float = Field(0.0, ge=0.0, description="Pairs with a smaller chosen - rejected margin are left out.")
    rejected: Literal[tuple(REJECTED_POLICIES)] = Field(  # type: ignore[valid-type]  # the choices, named once
        MIN, description="How the rejected response is picked among those scored below the chosen one: min, the "
        "lowest score (the released recipe's); mean_minus_2sd, the score closest to mean - 2 sd of the row's usable "
        "scores (population sd; ties go to the lower score, then the lower index; arXiv 2502.16825). For up to 5 "
        "usable responses both pick the same one."
    )


class OutputConfig(_Section):
    """Where results go."""

    dir: Path = Field(Path("out/dpo_100k"), description="Output directory (dataset, pipeline.yaml, summary).")
    test_fraction: float = Field(0.02, gt=0.0, lt=1.0, description="Fraction of pairs in the test split.")
    push_to_hub: str | None = Field(None, description="Hub dataset repo to push to (needs HF_TOKEN).")
    private: bool = Field(False, description="Push as a private dataset.")
    argilla_dataset: str | None = Field(
        None, description="Argilla dataset to push pairs to for review (ARGILLA_API_URL / ARGILLA_API_KEY)."
    )
    argilla_workspace: str | None = Field(None, description="Argilla workspace (default: the server's default).")

    @field_validator("push_to_hub")
    @classmethod
    def _hub_repo_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(value)
        except HFValidationError as exc:
            raise ValueError(f"{value!r} is not a hub dataset id (ORG/NAME): {str(exc).splitlines()[0]}") from None
        return value



# The curation recipe's sections (magpie_dl.config.curation.InstructionsConfig).

# The reference's instruct-reward model. `selection.min_instruct_reward`'s default (-5) is on
# its scale; other reward models score on theirs (ArmoRM ~0.1), so -5 would filter nothing.
INSTRUCT_REWARD_MODEL = "sfairXC/FsfairX-LLaMA3-RM-v0.1"
DEFAULT_MIN_INSTRUCT_REWARD = -5.0


class TaggingConfig(_Section):
    """The LLM judge and the language detector."""

    judge_model: str = Field("meta-llama/Meta-Llama-3-8B-Instruct", description="Judge model for the tags.")
    tasks: TagTaskNames = Field(default_factory=lambda: list(TAG_TASKS), description="Tag tasks to run.")
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
    """Near-duplicate detection: the encoder, and the search (declared by magpie_dl.curation.dedup.DedupConfig)."""

    embedding_model: str = Field(REFERENCE_MODEL, description=f"Sentence encoder; {PACKAGED_MINILM} works offline.")
    embedding_batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    device: Device = Field("cuda", description="Torch device of the encoder.")
    threshold: float = setting(DedupConfig, "threshold")
    k: int = setting(DedupConfig, "k")
    method: SearchMethod = setting(DedupConfig, "method")
    index_min_rows: int = setting(DedupConfig, "index_min_rows")
    nprobe: int = setting(DedupConfig, "nprobe")


class SelectionSection(SelectionRules):
    """Thresholds and the balanced sample (declared by magpie_dl.curation.selection); the seed is the run's."""

    min_instruct_reward: float | None = setting(
        SelectionRules, "min_instruct_reward",
        description=f"Lowest instruct reward kept, on {INSTRUCT_REWARD_MODEL}'s scale (null: no check); "
        "set it explicitly for another reward.model.",
    )
    # The recipe selects the reference's 100K; the library's default keeps every eligible row.
    target_size: int | None = setting(SelectionRules, "target_size", default=100_000)
