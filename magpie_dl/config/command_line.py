"""The command line and YAML layer of a recipe's config: preset < YAML file < flags, validated.

Every knob is a field with a description; the command line is generated from the fields
of a recipe's config schema (``--responses.temperature 0.7``), with short aliases for the
common ones. Validation happens here, before any model loads, and each failure is one line
that says what to change. The schemas and presets are the recipes' own
(:mod:`magpie_dl.config.dpo`, :mod:`magpie_dl.config.curation`).
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args, get_origin

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




class Choices(tuple):
    """Field metadata naming the values a text setting takes, for ``--help`` only
    (``Annotated[str, AfterValidator(check), Choices(DTYPES)]``); the field's validator
    still does the checking, with its own one-line message."""


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fields(model: type[BaseModel], prefix: str = "", _skip: frozenset[str] | None = None):
    """(dotted path, field info) for every leaf field of the config tree that is a setting of
    this recipe: a shared section's field that the recipe names in its ``other_recipes_settings``
    (the curation judge's replicas, in the DPO recipe) is left out, from its help and its files."""
    skip = frozenset(getattr(model, "other_recipes_settings", ())) if _skip is None else _skip
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if path in skip:
            continue
        if _is_section(info.annotation):
            yield from _fields(info.annotation, f"{path}.", skip)
        else:
            yield path, info


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


_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


class _Switch(argparse.Action):
    """A boolean setting, both ways: ``--X`` / ``--X true`` / ``--X false`` and ``--no-X``."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        negatives = [f"--no-{flag[2:]}" for flag in option_strings]
        super().__init__([*option_strings, *negatives], dest, nargs="?", default=None, metavar="true|false", **kwargs)
        self.negatives = negatives

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        negative = option_string in self.negatives
        if values is None:
            setattr(namespace, self.dest, not negative)
            return
        word = str(values).strip().lower()
        if negative or word not in _TRUE_WORDS | _FALSE_WORDS:
            parser.error(f"argument {option_string}: expected true or false, got {values!r}"
                         + (f"; write {option_string} alone" if negative else ""))
        setattr(namespace, self.dest, (word in _TRUE_WORDS) != negative)


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

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _Switch):  # --X [true|false], --no-X
            positives = [flag for flag in action.option_strings if flag not in action.negatives]
            return ", ".join([f"{flag} [true|false]" for flag in positives] + action.negatives)
        return super()._format_action_invocation(action)


class _Parser(argparse.ArgumentParser):
    """A recipe's parser: no abbreviations (``--num-instruction`` is not ``--num-instructions``),
    and a mistake is one line with a hint, not the whole usage first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        hint = ""
        unknown = [word.split("=", 1)[0] for word in message.split() if word.startswith("--")]
        if message.startswith("unrecognized arguments") and unknown:
            close = difflib.get_close_matches(unknown[0], list(self._option_string_actions), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
        self.exit(2, f"{self.prog}: error: {message}{hint} (--help lists every setting)\n")


def _choices(info: Any) -> tuple[Any, ...] | None:
    """The values a setting takes, where it names them: a ``Literal`` or :class:`Choices`."""
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return next((meta for meta in info.metadata if isinstance(meta, Choices)), None)


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
    # Dozens of settings: the usage line says their shape, the list below names each one.
    usage = "%(prog)s [--preset NAME] [--config FILE] [--SECTION.SETTING VALUE ...] [run flags]"
    parser = _Parser(description=description, usage=usage, formatter_class=_HelpFormatter)
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
            parser.add_argument(*flags, dest=path, action=_Switch, help=f"{described} (default: {defaults[path]})")
            continue
        choices = _choices(info)
        # A Literal's values are checked here; other named values (a family) by the field's validator.
        enforced = get_origin(info.annotation) is Literal
        parser.add_argument(*flags, dest=path, default=None, choices=choices if enforced else None,
                            metavar="{" + ",".join(map(str, choices)) + "}" if choices else "VALUE",
                            help=f"{described} (default: {defaults[path]})")
    parser.set_defaults(_schema=schema, _presets=presets)
    return parser


def resolve(args: argparse.Namespace) -> Any:
    """preset < YAML file < flags, validated against the parser's schema; one-line ConfigError.

    A problem with a value the YAML file set (and no flag overrode) names the file and the key.
    """
    schema: type[BaseModel] = args._schema
    presets: dict[str, dict[str, Any]] = args._presets
    data: dict[str, Any] = json.loads(json.dumps(presets[args.preset]))
    from_file: set[str] = set()
    if args.config is not None:
        content = load_yaml(args.config)
        from_file = check_keys(content, schema, args.config)
        data = deep_merge(data, content)
    for path, info in _fields(schema):
        raw = getattr(args, path, None)
        if raw is None:
            continue
        from_file.discard(path)
        if info.annotation == list[str]:
            value: Any = [item.strip() for item in str(raw).split(",") if item.strip()]
        elif isinstance(raw, bool) or _keeps_text(info.annotation):
            value = raw
        else:
            value = _parse_value(raw)
        _set_path(data, path, value)
    try:
        cfg = schema.model_validate(data)
    except ValidationError as exc:
        where, message = _first_problem(exc)
        if where in from_file:
            raise ConfigError(f"config file {args.config}: {where}: {message}") from None
        raise ConfigError(f"--{where}: {message}" if where else message) from None
    if "_preset" in (cfg.__private_attributes__ or {}):  # a config that remembers its preset (for hints)
        cfg._preset = args.preset
    return cfg


def check_keys(content: dict[str, Any], schema: type[BaseModel], source: Path) -> set[str]:
    """The dotted settings a YAML file sets; a key that is no setting of ``schema`` is a
    one-line ConfigError naming the file, the key and the closest setting."""
    settings = [path for path, _ in _fields(schema)]
    sections = {path.rsplit(".", 1)[0] for path in settings if "." in path}
    found: set[str] = set()

    def walk(mapping: dict[str, Any], prefix: str) -> None:
        for key, value in mapping.items():
            path = f"{prefix}{key}"
            if path in settings:
                found.add(path)
            elif path in sections and isinstance(value, dict):
                walk(value, f"{path}.")
            elif path in sections:
                raise ConfigError(f"config file {source}: {path} is a section; give it a mapping of settings")
            else:
                close = difflib.get_close_matches(path, settings + sorted(sections), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else "; --print-config shows every setting"
                raise ConfigError(f"config file {source}: {path} is not a setting of this recipe{hint}")

    walk(content, "")
    return found


def _first_problem(exc: ValidationError) -> tuple[str, str]:
    """(dotted field, message) of a validation error's first problem, with a count of the others."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return where, f"{message}{extra}"


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
        where, message = _first_problem(exc)
        # A check across sections has no one field to name: its message names them.
        raise ConfigError(f"--{where}: {message}" if where else message) from None
