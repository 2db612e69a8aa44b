"""Judge prompts, JSON schemas and a robust parser for instruction tagging.

Magpie tags every instruction with an LLM judge at temperature 0, one prompt per tag
family, each answered as a JSON object (FIELD_NOTES §1):

- ``difficulty``: the user's intent, the knowledge needed, and a difficulty level;
- ``quality``: an explanation, then an input-quality level;
- ``classification``: a primary task category among 12 tags, plus other tags.

Each :class:`TagTask` holds the prompt, the JSON schema the answer must follow (sent as
structured outputs where the backend supports them), and the mapping from answer keys to
the released column names. Reasoning fields come before the rating in every schema so a
model that generates in schema order writes its justification before its verdict.

Backends without structured outputs (transformers) return free text, so
:func:`parse_judge_output` is lenient in what it reads and strict in what it returns:
strict JSON first, then the first decodable JSON object inside the text (code fences,
prose around it, raw control characters inside strings), then the same after a missing
leading brace (answers that continue a prefilled ``{``). The decoded object is then
normalised (label case and spelling) and validated against the schema. A failure is
returned as ``(None, reason)``, never raised, so callers record the raw output and
count it: :func:`record_answer` puts an answer into its row, its columns or a
``tagging_errors`` entry, for the judge's tasks and the guard alike.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator

from magpie_dl.recipe.reasons import FINISH_ERROR, is_usable

DIFFICULTY_LEVELS: tuple[str, ...] = ("very easy", "easy", "medium", "hard", "very hard")
QUALITY_LEVELS: tuple[str, ...] = ("very poor", "poor", "average", "good", "excellent")
TASK_CATEGORIES: tuple[str, ...] = (
    "Information seeking",
    "Reasoning",
    "Planning",
    "Editing",
    "Coding & Debugging",
    "Math",
    "Role playing",
    "Data analysis",
    "Creative writing",
    "Advice seeking",
    "Brainstorming",
    "Others",
)

_CATEGORY_HELP = {
    "Information seeking": "asks for facts, explanations or information on a topic",
    "Reasoning": "needs logical thinking, problem solving or working through an argument",
    "Planning": "asks for a plan, a schedule, steps or a strategy to reach a goal",
    "Editing": "asks to edit, rephrase, proofread, translate or otherwise rework a given text",
    "Coding & Debugging": "asks to write, review, explain or fix code",
    "Math": "asks to solve or explain a mathematical problem or concept",
    "Role playing": "asks the assistant to act as a character or persona",
    "Data analysis": "asks to interpret, summarise or compute over data or statistics",
    "Creative writing": "asks for stories, poems, scripts or other creative text",
    "Advice seeking": "asks for advice or recommendations on a personal or practical matter",
    "Brainstorming": "asks for many ideas or options",
    "Others": "none of the above",
}

DIFFICULTY_PROMPT = """\
You are reviewing a query that a user sent to an AI assistant. Judge how hard it is to \
answer the query well.

## User query
```
{instruction}
```

## What to write
1. "intent": one sentence on what the user wants, starting with "The user wants to".
2. "knowledge": one sentence on what someone answering needs to know, starting with \
"To solve this problem, the models need to know".
3. "difficulty": exactly one of "very easy", "easy", "medium", "hard", "very hard".

Answer with one JSON object and nothing else, for example:
{{"intent": "The user wants to ...", "knowledge": "To solve this problem, the models need \
to know ...", "difficulty": "medium"}}
"""

QUALITY_PROMPT = """\
You are reviewing a query that a user sent to an AI assistant. Judge the quality of the \
query itself (not how hard it is): is it clear, specific and coherent, and does it give \
the context needed to answer it?

## User query
```
{instruction}
```

## What to write
1. "explanation": two or three sentences on the query's strengths and weaknesses.
2. "input_quality": exactly one of "very poor", "poor", "average", "good", "excellent".
   - very poor: unclear, vague or incoherent; essential context is missing.
   - poor: somewhat unclear or missing important details; needs clarification.
   - average: moderately clear; some details would help.
   - good: clear and specific; minor gaps at most.
   - excellent: very clear, specific and well formed, with all the context needed.

Answer with one JSON object and nothing else, for example:
{{"explanation": "...", "input_quality": "good"}}
"""

CLASSIFICATION_PROMPT = """\
You are reviewing a query that a user sent to an AI assistant. Classify the task it asks for.

## User query
```
{instruction}
```

## Task tags
{tag_list}

## What to write
1. "primary_tag": the one tag that fits the query best.
2. "other_tags": a list of further tags that also apply (possibly empty), without the \
primary tag.

Answer with one JSON object and nothing else, for example:
{{"primary_tag": "Coding & Debugging", "other_tags": ["Reasoning"]}}
"""


def _string(description: str, max_length: int) -> dict[str, Any]:
    # maxLength bounds generation under structured outputs: a model that never closes the
    # string (small models at temperature 0 do) would otherwise run to max_tokens and
    # leave invalid JSON. The parser does not enforce it on free-text answers.
    return {"type": "string", "description": description, "maxLength": max_length}


DIFFICULTY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": _string("What the user wants.", 300),
        "knowledge": _string("What is needed to answer.", 300),
        "difficulty": {"type": "string", "enum": list(DIFFICULTY_LEVELS)},
    },
    "required": ["intent", "knowledge", "difficulty"],
    "additionalProperties": False,
}

QUALITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explanation": _string("Strengths and weaknesses of the query.", 600),
        "input_quality": {"type": "string", "enum": list(QUALITY_LEVELS)},
    },
    "required": ["explanation", "input_quality"],
    "additionalProperties": False,
}

CLASSIFICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "primary_tag": {"type": "string", "enum": list(TASK_CATEGORIES)},
        "other_tags": {
            "type": "array",
            "items": {"type": "string", "enum": list(TASK_CATEGORIES)},
            # Released rows carry a few secondary tags; a bound keeps a looping model
            # (greedy small models repeat one tag) inside the token budget.
            "maxItems": 4,
        },
    },
    "required": ["primary_tag", "other_tags"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class TagTask:
    """One judge question: prompt, answer schema, and answer key -> output column.

    Attributes:
        name: ``difficulty``, ``quality`` or ``classification``.
        template: prompt with an ``{instruction}`` slot.
        schema: JSON schema of the answer.
        columns: answer key -> column name in the released data.
    """

    name: str
    template: str
    schema: dict[str, Any]
    columns: dict[str, str] = field(default_factory=dict)

    def render(self, instruction: str) -> str:
        """The user message sent to the judge for ``instruction``."""
        return self.template.format(instruction=instruction, tag_list=_tag_list())

    def parse(self, text: str) -> tuple[dict[str, Any] | None, str | None]:
        """Parse an answer into ``{column: value}``; ``(None, reason)`` if unusable."""
        value, error = parse_judge_output(text, self.schema)
        if value is None:
            return None, error
        return {col: value[key] for key, col in self.columns.items()}, None

    def empty_columns(self) -> dict[str, Any]:
        """The output columns of a failed answer (all None)."""
        return dict.fromkeys(self.columns.values())


def _tag_list() -> str:
    return "\n".join(f"- {name}: the query {help_}" for name, help_ in _CATEGORY_HELP.items())


TAG_TASKS: dict[str, TagTask] = {
    "difficulty": TagTask(
        "difficulty",
        DIFFICULTY_PROMPT,
        DIFFICULTY_SCHEMA,
        {"intent": "intent", "knowledge": "knowledge", "difficulty": "difficulty"},
    ),
    "quality": TagTask(
        "quality",
        QUALITY_PROMPT,
        QUALITY_SCHEMA,
        {"explanation": "quality_explanation", "input_quality": "input_quality"},
    ),
    "classification": TagTask(
        "classification",
        CLASSIFICATION_PROMPT,
        CLASSIFICATION_SCHEMA,
        {"primary_tag": "task_category", "other_tags": "other_task_category"},
    ),
}


def check_tag_tasks(tasks: list[str]) -> list[str]:
    """The tag tasks to run: a non-empty list of names of :data:`TAG_TASKS`."""
    unknown = [name for name in tasks if name not in TAG_TASKS]
    if unknown or not tasks:
        what = f"unknown tag task {', '.join(unknown)}" if unknown else "no tag task given"
        raise ValueError(f"{what}; use some of: {', '.join(TAG_TASKS)}")
    return tasks


# Checked wherever it is declared (the recipe's tagging section, the tagging step).
TagTaskNames = Annotated[list[str], AfterValidator(check_tag_tasks)]


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_DECODER = json.JSONDecoder(strict=False)  # strict=False: raw newlines/tabs inside strings


def extract_json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Find the JSON object in a model answer: ``(object, None)`` or ``(None, reason)``.

    Tried in order: the whole text as JSON; the first ``{`` from which a JSON object
    decodes (prose or a second object after it is ignored); the text with a leading
    ``{`` added (answer continuing a prefilled brace); a Python-literal dict (single
    quotes), which small models sometimes write.
    """
    if not isinstance(text, str) or not text.strip():
        return None, "empty output"
    body = _FENCE.sub("", text.strip())
    try:
        obj = json.loads(body, strict=False)
        if isinstance(obj, dict):
            return obj, None
    except json.JSONDecodeError:
        pass
    for candidate in (body, "{" + body):
        for match in re.finditer(r"\{", candidate):
            try:
                obj, _ = _DECODER.raw_decode(candidate, match.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj, None
    start, end = body.find("{"), body.rfind("}")
    if 0 <= start < end:
        try:
            obj = ast.literal_eval(body[start : end + 1])
            if isinstance(obj, dict):
                return obj, None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    if "{" in body and "}" not in body[body.find("{") :]:
        return None, "no complete JSON object (truncated output?)"
    return None, "no JSON object found"


def _label_key(label: str) -> str:
    # "Coding and debugging", "coding_&_debugging", " Very-Easy " -> comparable keys.
    return re.sub(r"[^a-z0-9]+", "", label.lower().replace("&", "and"))


def _canonical(value: Any, allowed: list[str]) -> str | None:
    if not isinstance(value, str):
        return None
    key = _label_key(value)
    for label in allowed:
        if _label_key(label) == key:
            return label
    return None


def normalize_and_validate(
    obj: dict[str, Any], schema: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """Coerce labels to their canonical spelling, then check ``obj`` against ``schema``.

    Handles the subset of JSON schema our answers use: an object of strings, enum
    strings and arrays of enum strings. Keys are matched case-insensitively. Unknown
    entries in an enum *array* (``other_tags``) are dropped rather than failing the
    whole answer: the secondary tags are advisory, the primary ones are not.
    """
    props: dict[str, Any] = schema.get("properties", {})
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    out: dict[str, Any] = {}
    for key, spec in props.items():
        if key not in lowered:
            if key in schema.get("required", []):
                return None, f"missing key {key!r}"
            continue
        value = lowered[key]
        kind = spec.get("type")
        if kind == "string":
            if "enum" in spec:
                label = _canonical(value, spec["enum"])
                if label is None:
                    return None, f"{key}: {value!r} is not one of {spec['enum']}"
                value = label
            elif not isinstance(value, str):
                return None, f"{key}: expected a string, got {type(value).__name__}"
            out[key] = value.strip()
        elif kind == "array":
            if isinstance(value, str):  # "Math, Reasoning"
                value = [v for v in re.split(r"[,;]", value) if v.strip()]
            if not isinstance(value, list):
                return None, f"{key}: expected a list, got {type(value).__name__}"
            allowed = spec.get("items", {}).get("enum")
            if allowed is not None:
                labels = [_canonical(v, allowed) for v in value]
                value = list(dict.fromkeys(v for v in labels if v is not None))
            out[key] = value
        else:  # pragma: no cover - our schemas only use the kinds above
            out[key] = value
    return out, None


def parse_judge_output(
    text: str, schema: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """Extract, normalise and validate a judge answer: ``(value, None)`` or ``(None, reason)``."""
    obj, error = extract_json_object(text)
    if obj is None:
        return None, error
    value, error = normalize_and_validate(obj, schema)
    if value is not None and "primary_tag" in value and "other_tags" in value:
        # The primary tag is not also an "other" tag.
        value["other_tags"] = [t for t in value["other_tags"] if t != value["primary_tag"]]
    return value, error


# --------------------------------------------------------------------------- safety

_GUARD_VERDICTS = ("safe", "unsafe")


def parse_guard_output(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a Llama Guard answer (``safe``, or ``unsafe`` then a line of categories).

    Returns ``({"safety": "safe" | "unsafe", "safety_categories": [...]}, None)`` or
    ``(None, reason)``. The guard model's own chat template writes the prompt; only the
    verdict format is shared by Llama Guard 2 and 3.
    """
    if not isinstance(text, str) or not text.strip():
        return None, "empty output"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    verdict = lines[0].lower().rstrip(".")
    if verdict not in _GUARD_VERDICTS:
        return None, f"first line {lines[0][:40]!r} is neither 'safe' nor 'unsafe'"
    categories: list[str] = []
    if verdict == "unsafe" and len(lines) > 1:
        categories = [c.strip() for c in re.split(r"[,\s]+", lines[1]) if c.strip()]
    return {"safety": verdict, "safety_categories": categories}, None


# --------------------------------------------------------------------------- rows

SAFETY_TASK = "safety"  # the task name of the guard's failures in tagging_errors


class Answer(Protocol):
    """What is read of one judge or guard completion (``backends.base.Completion`` is one)."""

    text: str
    finish_reason: str
    error: str | None


def taggable(row: Mapping[str, Any]) -> bool:
    """Whether a row is sent to the judge: rows the generator marked unusable (empty,
    truncated...) or with a blank instruction are passed through untagged."""
    return is_usable(row) and bool((row.get("instruction") or "").strip())


def untagged_columns(tasks: Iterable[TagTask], model: str) -> dict[str, Any]:
    """A row's judge columns before any answer: every task's columns None, no errors yet."""
    columns: dict[str, Any] = {}
    for task in tasks:
        columns.update(task.empty_columns())
    columns["tagging_model"] = model
    columns["tagging_errors"] = []
    return columns


def unguarded_columns(model: str, tagging_errors: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A row's guard columns before its answer; the judge's ``tagging_errors`` are kept (copied)."""
    return {
        "safety": None, "safety_categories": [], "safety_model": model, "tagging_errors": list(tagging_errors or []),
    }


def record_answer(
    row: dict[str, Any],
    task: str,
    parse: Callable[[str], tuple[dict[str, Any] | None, str | None]],
    answer: Answer,
) -> bool:
    """Put one answer into ``row``: its parsed columns, or (a failed completion or an
    unreadable answer) a ``tagging_errors`` entry ``{task, error, finish_reason, raw_output}``.
    A request that failed after its retries also sets the row's ``request_error`` (the run
    then ends as one with failed requests, never as a row that merely lacks a tag).
    True when the answer parsed."""
    if answer.finish_reason == FINISH_ERROR:
        value, error = None, f"backend error: {answer.error}"
        if getattr(answer, "request_failed", False) and not row.get("request_error"):
            row["request_error"] = f"{task}: {answer.error or 'request failed'}"
    else:
        value, error = parse(answer.text)
    if value is None:
        row["tagging_errors"].append(
            {"task": task, "error": error, "finish_reason": answer.finish_reason, "raw_output": answer.text}
        )
        return False
    row.update(value)
    return True
