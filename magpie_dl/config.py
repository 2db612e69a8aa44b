"""The recipe's configuration: validated, layered (preset < YAML file < flags), documented.

Every knob is a field with a description; the command line is generated from the
fields (``--responses.temperature 0.7``), with short aliases for the common ones.
Validation happens here, before any model loads, and each failure is one line that
says what to change.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from magpie_dl.estimate import EstimateConfig
from magpie_dl.families import FAMILIES
from magpie_dl.magpie import CONTROL_TASKS
from magpie_dl.paths import models_dir
from magpie_dl.prompts import DEFAULT_TEMPLATE_DATE
from magpie_dl.scaleout_config import ScaleoutConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# Local models: $MAGPIE_DL_MODELS, else the checkout's models/, else a user cache (magpie_dl.paths).
TINY_DIR = models_dir() / "tiny"
# SmolLM2-135M-Instruct converted from its PyPI wheel (magpie_dl.smollm2; `make models`).
SMOLLM2_DIR = models_dir() / "smollm2"


class ConfigError(ValueError):
    """A configuration problem, phrased as what to change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check_model_ref(value: str) -> str:
    """A model is a local model directory (with a ``config.json``) or a hub id ``org/name``.

    Whether a hub id can be fetched (offline, no network) is checked before the run
    (:func:`magpie_dl.preflight.check_model_sources`), not here: this runs for
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
DType = Annotated[str, AfterValidator(_check_dtype)]
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
    control_task: str | None = Field(None, description=f"Built-in system prompt: {', '.join(CONTROL_TASKS)}.")
    system_prompts: dict[str, tuple[str | None, float]] | None = Field(
        None, description="Weighted system-prompt categories, {name: [prompt or null, weight]} (YAML)."
    )
    ban_first_token_markdown: bool = Field(True, description="Ban markdown tokens at a query's first position.")
    stop_at_newline: bool | None = Field(
        None, description="Stop queries at their first newline (the reference's early stop); null: the "
        "family's default (on for llama-3, qwen2, qwen2.5, phi-3, mistral-v0.3; off for the others)."
    )
    batch_size: int = Field(1000, ge=1, description="Queries per batch sent to the engine.")

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


class BackendConfig(_Section):
    """Where generation runs."""

    kind: Literal["transformers", "vllm", "openai"] = Field("vllm", description="transformers | vllm | openai")
    base_urls: list[str] = Field(default_factory=list, description="vLLM server URLs for --backend openai.")
    device: Device = Field("cuda", description="Torch device for the transformers backend.")
    dtype: DType = Field("bfloat16", description="Model dtype: auto | float32 | bfloat16 | float16")
    tensor_parallel_size: int = Field(8, ge=1, description="vLLM: GPUs per engine.")
    max_model_len: int | None = Field(8192, description="vLLM: context length.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vLLM: fraction of GPU memory.")
    enable_prefix_caching: bool = Field(True, description="vLLM: reuse the shared pre-query prefix.")
    transformers_batch_size: int = Field(64, ge=1, description="transformers: completions per forward pass.")
    chat_template_date: date = Field(
        date.fromisoformat(DEFAULT_TEMPLATE_DATE),
        description="Date chat templates render as today (Llama 3.1+); pinned so a resumed run builds the same prompts.",
    )

    @model_validator(mode="after")
    def _urls_for_openai(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_urls:
            raise ValueError("backend openai needs --base-url URL[,URL...]")
        return self


class PairingConfig(_Section):
    """Best/worst pairing."""

    min_margin: float = Field(0.0, ge=0.0, description="Pairs with a smaller chosen - rejected margin are left out.")


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


class RecipeConfig(_Section):
    """The whole Magpie DPO recipe."""

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
    "--push-to-hub": "output.push_to_hub",
    "--num-instructions": "generator.num_instructions",
    "--family": "generator.family",
    "--trust-remote-code": "reward.trust_remote_code",
    "--ray": "scaleout.ray",
}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# The demo: a real aligned chat model writes the queries and the responses; the tiny
# ArmoRM-layout model scores them (no real reward model can be had offline).
PRESETS["demo"] = _deep_merge(
    PRESETS["smoke"],
    {
        "generator": {
            "model": str(SMOLLM2_DIR),
            "family": "smollm2",
            "num_instructions": 32,
            "temperature": 0.9,
            "max_tokens": 96,
            "batch_size": 32,
        },
        "responses": {"max_tokens": 320, "batch_size": 32},
        "reward": {"input_batch_size": 32},
        "backend": {"max_model_len": 2048, "transformers_batch_size": 160},
        "output": {"dir": "out/demo"},
    },
)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def _fields(model: type[BaseModel], prefix: str = ""):
    """(dotted path, field info) for every leaf field of the config tree."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _parse_value(raw: str) -> Any:
    """Flag values are YAML scalars (``0.8``, ``true``, ``null``); lists are comma-separated."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError):  # e.g. "2025-13-45" looks like a date to YAML; let validation say why
        return raw


def _keeps_text(annotation: Any) -> bool:
    """Whether a field takes a flag's text as it is (``--generator.model null`` is a path)."""
    return annotation in (str, Path, str | None, Path | None)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each default once: a field's flag names its field's default in its help (its
    parser default is None, meaning "not given"), so only the run flags get one appended,
    and a None or False default ("not given", "off") is not worth a mention."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default:" in text or default is None or default is False or default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(
    description: str,
    schema: type[BaseModel] = RecipeConfig,
    presets: dict[str, dict[str, Any]] = PRESETS,
    aliases: dict[str, str] = ALIASES,
    run_flags: bool | tuple[str, ...] = True,
) -> argparse.ArgumentParser:
    """``--preset``, ``--config FILE``, ``--print-config``, one flag per field of ``schema``.

    ``run_flags`` adds the flags of a recipe run (``--fresh``, ``--dry-run``, ``--quiet``,
    ``--verbose``): all of them, or the ones named (``("fresh", "dry_run")``).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--preset", choices=sorted(presets), default="full", help="Starting point for the config.")
    parser.add_argument("--config", type=Path, help="YAML file with overrides (same structure as --print-config).")
    parser.add_argument("--print-config", action="store_true", help="Print the resolved config and exit.")
    wanted = ("fresh", "dry_run", "quiet", "verbose") if run_flags is True else tuple(run_flags or ())
    if "fresh" in wanted:
        parser.add_argument("--fresh", action="store_true", help="Ignore stored results from earlier runs.")
    if "dry_run" in wanted:
        parser.add_argument("--dry-run", action="store_true",
                            help="Print the graph, the resolved config and a work estimate; load no model.")
    if "quiet" in wanted:
        parser.add_argument("--quiet", action="store_true", help="No live progress lines (for log files).")
    if "verbose" in wanted:
        parser.add_argument("--verbose", action="store_true",
                            help="Show the libraries' own progress bars, warnings and logs too.")
    reverse = {path: alias for alias, path in aliases.items()}
    for path, info in _fields(schema):
        # argparse %-formats help strings: a literal % in a description ("30% ...") must be doubled.
        described = (info.description or "").replace("%", "%%")
        # An alias that spells the path itself (--instructions) is the same flag, listed once.
        flags = list(dict.fromkeys([f"--{path}", reverse.get(path, f"--{path}")]))
        if "_" in path and reverse.get(path) == "--" + path.replace("_", "-"):
            # One spelling shown (``--output-dir``, as in every recipe); the field's own
            # (``--output_dir``) still works, unlisted, for old command lines.
            flags = [reverse[path]]
            parser.add_argument(f"--{path}", dest=path, default=None, help=argparse.SUPPRESS)
        if info.annotation is bool:
            parser.add_argument(*flags, dest=path, action="store_const", const=True, default=None,
                                help=f"{described} (default: {info.default})")
            parser.add_argument(f"--no-{path}", dest=path, action="store_const", const=False,
                                help=argparse.SUPPRESS)
            continue
        default = info.default if info.default_factory is None else info.default_factory()
        parser.add_argument(*flags, dest=path, default=None, metavar="VALUE",
                            help=f"{described} (default: {default})")
    parser.set_defaults(_schema=schema, _presets=presets)
    return parser


def resolve(args: argparse.Namespace) -> Any:
    """preset < YAML file < flags, validated against the parser's schema; one-line ConfigError."""
    schema: type[BaseModel] = getattr(args, "_schema", RecipeConfig)
    presets: dict[str, dict[str, Any]] = getattr(args, "_presets", PRESETS)
    data: dict[str, Any] = json.loads(json.dumps(presets[args.preset]))
    if args.config is not None:
        data = _deep_merge(data, load_yaml(args.config))
    for path, info in _fields(schema):
        raw = getattr(args, path, None)
        if raw is None:
            continue
        if info.annotation == list[str]:
            value: Any = [item.strip() for item in str(raw).split(",") if item.strip()]
        elif isinstance(raw, bool) or _keeps_text(info.annotation):
            value = raw
        else:
            value = _parse_value(raw)
        _set_path(data, path, value)
    return validate(data, schema)


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"{key} at line {line}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a mapping naming one key twice (plain YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` brings keys that the mapping may override
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class says so
                break
            if duplicate:
                raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML config file as a mapping; every problem is a one-line ConfigError."""
    try:
        content = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except _DuplicateKeyError as exc:
        raise ConfigError(f"config file {path} sets `{exc.key}` twice (line {exc.line}); keep one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.__class__.__name__}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(content).__name__}")
    return content


def validate(data: dict[str, Any], schema: type[BaseModel] = RecipeConfig) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        # A check across sections has no one field to name: its message names them.
        raise ConfigError(f"--{where}: {message}{extra}" if where else f"{message}{extra}") from None

