"""The command line and YAML layer of a recipe's config: preset < YAML file < flags, validated.

Every knob is a field with a description; the command line is generated from the fields
of a recipe's config schema (``--responses.temperature 0.7``), with short aliases for the
common ones. Validation happens here, before any model loads, and each failure is one line
that says what to change. The schemas and presets are the recipes' own
(:mod:`magpie_dl.config.dpo`, :mod:`magpie_dl.config.curation`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration problem, phrased as what to change."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged




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


def _defaults(schema: type[BaseModel]) -> dict[str, Any]:
    """Every leaf field's default as the recipe has it: a section's own default can be
    overridden by the recipe's default for the section (300K queries to curate, not 100K)."""

    def walk(section: BaseModel, prefix: str) -> Iterator[tuple[str, Any]]:
        for name, info in type(section).model_fields.items():
            value = getattr(section, name)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                yield from walk(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", value

    # Defaults only, unvalidated: a default hub model need not exist here to be shown.
    return dict(walk(schema.model_construct(), ""))


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
    schema: type[BaseModel],
    presets: dict[str, dict[str, Any]],
    aliases: dict[str, str],
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
    defaults = _defaults(schema)
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
                                help=f"{described} (default: {defaults[path]})")
            parser.add_argument(f"--no-{path}", dest=path, action="store_const", const=False,
                                help=argparse.SUPPRESS)
            continue
        parser.add_argument(*flags, dest=path, default=None, metavar="VALUE",
                            help=f"{described} (default: {defaults[path]})")
    parser.set_defaults(_schema=schema, _presets=presets)
    return parser


def resolve(args: argparse.Namespace) -> Any:
    """preset < YAML file < flags, validated against the parser's schema; one-line ConfigError."""
    schema: type[BaseModel] = args._schema
    presets: dict[str, dict[str, Any]] = args._presets
    data: dict[str, Any] = json.loads(json.dumps(presets[args.preset]))
    if args.config is not None:
        data = deep_merge(data, load_yaml(args.config))
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


def validate(data: dict[str, Any], schema: type[BaseModel]) -> Any:
    """``data`` as a ``schema`` instance; the first problem as a one-line ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        # A check across sections has no one field to name: its message names them.
        raise ConfigError(f"--{where}: {message}{extra}" if where else f"{message}{extra}") from None

