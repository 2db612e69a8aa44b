"""The Argilla review dataset for Magpie DPO pairs: what reviewers see, answer and filter on.

One record per DPO row, keyed by the row's ``uuid``. Reviewers see the instruction, the chosen and
rejected responses and *all* sampled responses with their reward scores, and answer:

* ``preference`` (required): ``chosen`` / ``rejected`` / ``tie`` / ``both_bad``, pre-filled with the
  reward model's verdict (``chosen``, or ``tie`` when the pair's scores are equal);
* ``corrected_response`` (optional): a better answer written by the reviewer;
* ``note`` (optional): free text.

Metadata (scores, margin, tags, generator model) lets reviewers filter and sort, e.g. to look at
low-margin pairs first.

This module is the single definition of those names and of the row -> record mapping. It has no
Argilla import at module level; ``build_settings`` imports the SDK (``pip install -e '.[argilla]'``).

It lives in the package rather than in the top-level ``argilla/`` folder because a module under a
folder named ``argilla`` could never be imported next to the SDK package of the same name;
``argilla/`` holds the test-server tooling and a README pointing here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

if TYPE_CHECKING:
    import argilla as rg

# --- fields ---------------------------------------------------------------------------
FIELD_INSTRUCTION = "instruction"
FIELD_CHOSEN = "chosen"
FIELD_REJECTED = "rejected"
# Not "responses": that word is Argilla's name for reviewers' answers.
FIELD_ALL_RESPONSES = "all_responses"

# --- questions --------------------------------------------------------------------------
QUESTION_PREFERENCE = "preference"
QUESTION_CORRECTION = "corrected_response"
QUESTION_NOTE = "note"

LABEL_CHOSEN = "chosen"
LABEL_REJECTED = "rejected"
LABEL_TIE = "tie"
LABEL_BOTH_BAD = "both_bad"
PREFERENCE_LABELS: Dict[str, str] = {
    LABEL_CHOSEN: "Chosen is better",
    LABEL_REJECTED: "Rejected is better",
    LABEL_TIE: "Tie: equally good",
    LABEL_BOTH_BAD: "Both bad",
}

# --- metadata (values come from row_metadata) ---------------------------------------------
# Kept to what reviewers filter on: argilla-server 2.8 validates every metadata value of every
# record by building a pydantic schema on the fly (~1-3 ms each on this machine), so each extra
# property costs ~10% of push time.
FLOAT_METADATA = ("chosen_score", "rejected_score", "score_margin")
TERMS_METADATA = ("task_category", "difficulty", "input_quality", "language", "generator_model")

DEFAULT_REWARD_AGENT = "RLHFlow/ArmoRM-Llama3-8B-v0.1"

GUIDELINES = """\
Each record is one DPO pair picked from several sampled responses: **chosen** had the highest
reward-model score, **rejected** the lowest. All responses and their scores are shown for context.

**Which response is better?** (pre-filled with the reward model's verdict; change it if you disagree)
- *Chosen is better*: the pair is kept as is.
- *Rejected is better*: the pair is kept with chosen and rejected swapped.
- *Tie: equally good*: no preference; such pairs are dropped from the reviewed DPO set by default.
- *Both bad*: neither should be taught; the pair is dropped unless you write a corrected response.

**Corrected response** (optional): a good answer to the instruction. When given it becomes the chosen
response and the worse of the two originals becomes rejected, whatever you picked above.

**Note** (optional): anything worth recording (why you disagreed, what is wrong with the instruction).
"""


def build_settings(client: "rg.Argilla", guidelines: str = GUIDELINES) -> "rg.Settings":
    """The ``rg.Settings`` of the review dataset (imports the Argilla SDK).

    ``client`` is required because the SDK binds every field/question/metadata object to a client
    at construction and would otherwise build (and log in with) a default one from the environment.
    """
    try:
        import argilla as rg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Argilla review needs the SDK: pip install -e '.[argilla]'") from exc

    fields = [
        rg.TextField(name=FIELD_INSTRUCTION, title="Instruction", use_markdown=True, client=client),
        rg.TextField(name=FIELD_CHOSEN, title="Chosen (highest reward)", use_markdown=True, client=client),
        rg.TextField(name=FIELD_REJECTED, title="Rejected (lowest reward)", use_markdown=True, client=client),
        rg.TextField(
            name=FIELD_ALL_RESPONSES, title="All responses with reward scores", use_markdown=True, client=client
        ),
    ]
    questions = [
        rg.LabelQuestion(
            name=QUESTION_PREFERENCE,
            title="Which response is better?",
            labels=PREFERENCE_LABELS,
            required=True,
            client=client,
        ),
        rg.TextQuestion(
            name=QUESTION_CORRECTION,
            title="Corrected response (optional)",
            description="A good answer; it replaces the chosen response.",
            required=False,
            use_markdown=True,
            client=client,
        ),
        rg.TextQuestion(name=QUESTION_NOTE, title="Note (optional)", required=False, client=client),
    ]
    metadata = [rg.FloatMetadataProperty(name=name, client=client) for name in FLOAT_METADATA]
    metadata += [rg.TermsMetadataProperty(name=name, client=client) for name in TERMS_METADATA]
    return rg.Settings(fields=fields, questions=questions, metadata=metadata, guidelines=guidelines)


def settings_signature(settings: "rg.Settings") -> Dict[str, Any]:
    """What must match for an existing dataset to be reused: names, types and options.

    Server-assigned ids and timestamps, titles and guidelines are left out, so rewording a title
    does not lock users out of a dataset that already holds reviews.
    """
    serialized = settings.serialize()

    def question_options(question: Dict[str, Any]) -> Any:
        options = question["settings"].get("options")
        return sorted(option["value"] for option in options) if options else None

    return {
        "fields": {f["name"]: f["settings"]["type"] for f in serialized["fields"]},
        "questions": {
            q["name"]: (q["settings"]["type"], bool(q["required"]), question_options(q))
            for q in serialized["questions"]
        },
        "metadata": {m["name"]: m["settings"]["type"] for m in serialized["metadata"]},
    }


def describe_mismatch(expected: Dict[str, Any], found: Dict[str, Any]) -> str:
    """A short human description of how two settings signatures differ."""
    parts = []
    for section in ("fields", "questions", "metadata"):
        want, have = expected[section], found[section]
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        changed = sorted(name for name in set(want) & set(have) if want[name] != have[name])
        for label, names in (("missing", missing), ("unexpected", extra), ("different", changed)):
            if names:
                parts.append(f"{label} {section}: {', '.join(names)}")
    return "; ".join(parts) or "no difference"


@dataclass(frozen=True)
class RecordPayload:
    """One review record as plain data; ``magpie_dl.review.push`` turns it into an ``rg.Record``."""

    id: str
    fields: Dict[str, str]
    metadata: Dict[str, Any]
    suggested_preference: str
    suggestion_agent: str = DEFAULT_REWARD_AGENT


def _assistant_text(messages: Any) -> str:
    """The assistant turn of a ``[{"role": "user"}, {"role": "assistant"}]`` pair."""
    for message in reversed(list(messages or [])):
        if message.get("role") == "assistant":
            return str(message.get("content") or "")
    raise ValueError("pair has no assistant message")


def _score(value: Any) -> Optional[float]:
    """A finite float, or None (NaN cannot travel as JSON and means 'no score' anyway)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def reward_scores(row: Mapping[str, Any]) -> List[Optional[float]]:
    """Per-response reward scores from ``rewards_armorm`` or, scored by another model, ``rewards``
    ([{"score": x}, ...]; :mod:`magpie_dl.reward.columns`)."""
    from magpie_dl.reward.columns import score_column

    entries = row.get(score_column(row) or "rewards_armorm") or []
    return [_score(entry.get("score") if isinstance(entry, Mapping) else entry) for entry in entries]


def render_all_responses(row: Mapping[str, Any]) -> str:
    """Markdown listing every sampled response with its score, marking chosen and rejected."""
    scores = reward_scores(row)
    chosen_index, rejected_index = row.get("chosen_index"), row.get("rejected_index")
    blocks = []
    for index, text in enumerate(row.get("responses") or []):
        score = scores[index] if index < len(scores) else None
        header = f"**Response {index + 1}** · " + (f"score {score:.4g}" if score is not None else "no score")
        if index == chosen_index:
            header += " · **chosen**"
        if index == rejected_index:
            header += " · **rejected**"
        blocks.append(f"{header}\n\n{text}")
    return "\n\n---\n\n".join(blocks)


def suggested_preference(row: Mapping[str, Any]) -> str:
    """The reward model's verdict: ``chosen``, or ``tie`` when the pair's scores are equal."""
    margin = _score(row.get("score_margin"))
    same_response = row.get("chosen_index") is not None and row.get("chosen_index") == row.get("rejected_index")
    if same_response or margin == 0.0:
        return LABEL_TIE
    return LABEL_CHOSEN


def row_metadata(row: Mapping[str, Any]) -> Dict[str, Any]:
    """Metadata values present in ``row``; absent or empty ones are left out, not sent as null."""
    response_configs = row.get("gen_response_configs") or {}
    input_configs = row.get("gen_input_configs") or {}
    values: Dict[str, Any] = {
        "chosen_score": _score(row.get("chosen_score")),
        "rejected_score": _score(row.get("rejected_score")),
        "score_margin": _score(row.get("score_margin")),
        "task_category": row.get("task_category"),
        "difficulty": row.get("difficulty"),
        "input_quality": row.get("input_quality"),
        "language": row.get("language"),
        # The model that wrote the responses under review; the instruction generator when a
        # row does not say (the recipe uses one model for both by default).
        "generator_model": response_configs.get("output_generator") or input_configs.get("input_generator"),
    }
    return {name: value for name, value in values.items() if value is not None and value != ""}


def record_payload(row: Mapping[str, Any], reward_agent: str = DEFAULT_REWARD_AGENT) -> RecordPayload:
    """Maps one DPO row to its review record (id = the row's uuid, so re-pushing updates it)."""
    uuid = row.get("uuid")
    if not uuid:
        raise ValueError("row has no uuid; the review record id must be stable across reruns")
    return RecordPayload(
        id=str(uuid),
        fields={
            FIELD_INSTRUCTION: str(row["instruction"]),
            FIELD_CHOSEN: _assistant_text(row["chosen"]),
            FIELD_REJECTED: _assistant_text(row["rejected"]),
            FIELD_ALL_RESPONSES: render_all_responses(row),
        },
        metadata=row_metadata(row),
        suggested_preference=suggested_preference(row),
        suggestion_agent=reward_agent,
    )
