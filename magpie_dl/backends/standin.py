"""A fast stand-in at the model boundary, for runs at scale: NOT a model, never real data.

The recipe's graph (the real distilabel pipeline, result store, export, card, report) is what
a scale run measures; the engines are what it cannot afford. :class:`StandInBackend` answers
every :meth:`~magpie_dl.backends.base.CompletionLLM.complete` at once, from a seeded hash of
the exact prompt and sampling parameters, with long-tailed lengths in a real tokenizer's
tokens; :class:`StandInScorer` stands in for the reward model. Both produce, at random
positions spread over the whole run (late ones included), every outcome a model can cause:

- queries: empty, engine error, cut at max_tokens, exact duplicates, a query whose
  self-answer the cleaner cuts leaving a fragment, one ending mid-sentence, too short, no letters;
- responses: empty, whitespace only, engine error, cut at max_tokens (the long tail), a row
  whose responses nearly all fail (fewer than two usable);
- judge answers (requests with a JSON schema): valid answers, and ones that do not parse;
- scores: NaN, ``gating_tokens_missing``, rows with every score tied and rows with some tied,
  inputs longer than ``max_length`` marked truncated.

Every row it writes names it: the generator is ``magpie_dl-stand-in:<tokenizer>`` in
``gen_input_configs`` and ``gen_response_configs``, the engine is ``standin``, and the card says
so. Select it with ``--backend standin`` (or ``--preset scale``); the rates are
:data:`RATES`, each outcome's share of the requests it can apply to.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, PrivateAttr

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.recipe.provenance import model_label
from magpie_dl.recipe.reasons import GATING_TOKENS_MISSING, non_finite_score

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from magpie_dl.reward.scoring import Scored

STAND_IN = "magpie_dl-stand-in"

# Each rare outcome's share of the requests (or rows) it applies to.
RATES: dict[str, float] = {
    # queries
    "query_empty": 0.01, "query_error": 0.01, "query_truncated": 0.01, "query_duplicate": 0.02,
    "query_fragment": 0.01, "query_unfinished": 0.01, "query_too_short": 0.01, "query_no_letters": 0.01,
    "query_near_duplicate": 0.01,
    # responses (per response; the failing row per prompt)
    "response_empty": 0.01, "response_blank": 0.005, "response_error": 0.01, "row_mostly_failed": 0.01,
    # judge answers
    "judge_unparsable": 0.03,
    # scores (per response; the ties per row)
    "score_nan": 0.01, "score_gating_missing": 0.01, "row_all_tied": 0.01, "row_some_tied": 0.01,
}

# Queries the stand-in writes more than once (exact duplicates), and texts the query cleaner
# handles in known ways (its own answer cut off leaving a fragment; a turn ended mid-sentence).
DUPLICATE_QUERIES = (
    "What are the main causes of inflation in a modern economy?",
    "How do I write a cover letter for my first job?",
    "Can you explain how vaccines train the immune system?",
)
FRAGMENT_QUERY = "How do I convert a string to a\nassistant\n\nSure! To convert a string, use the built-in function."
UNFINISHED_QUERY = "How can I improve the way I "
_WORDS = (
    "the a of to and in is for that with on as it be by this are or an from at which can your how what "
    "data model plan budget garden recipe history science language python function water energy health "
    "market city travel write explain compare improve learn build design test measure choose reason "
    "simple small quick careful clear useful common different important practical example step first"
).split()


def _unit(*parts: Any) -> float:
    """A uniform number in [0, 1) from ``parts``: the same inputs, the same number, in any process."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] / 2**64


def _pick(u: float, outcomes: tuple[str, ...]) -> str | None:
    """The outcome whose slice of [0, 1) holds ``u`` (slices of :data:`RATES` laid end to end)."""
    edge = 0.0
    for name in outcomes:
        edge += RATES[name]
        if u < edge:
            return name
    return None


def long_tail_tokens(u: float, max_tokens: int, median_share: float) -> int:
    """A long-tailed length (log-normal, median ``median_share * max_tokens``, sigma 0.9): about
    one in a hundred draws passes ``max_tokens`` (then the completion is cut there)."""
    z = math.sqrt(2.0) * _erfinv(2.0 * min(max(u, 1e-9), 1 - 1e-9) - 1.0)
    return max(1, int(round(median_share * max_tokens * math.exp(0.9 * z))))


def _erfinv(y: float) -> float:
    # Winitzki's approximation refined by two Newton steps: exact enough for lengths.
    a = 0.147
    ln = math.log(1.0 - y * y)
    first = 2.0 / (math.pi * a) + ln / 2.0
    x = math.copysign(math.sqrt(math.sqrt(first * first - ln / a) - first), y)
    for _ in range(2):
        x -= (math.erf(x) - y) / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


class StandInBackend(CompletionLLM):
    """The generation stand-in: instant, seeded completions in ``model``'s tokenizer (no weights loaded).

    Attributes:
        model: a model directory or hub id whose tokenizer (and chat template) the stand-in
            writes in; only the tokenizer is loaded.
        seed: the run seed (part of every draw).
        seconds_per_prompt: a pause per prompt, to give a run the duration of a slow engine
            (tests that stop a run part-way); 0 by default.
    """

    kind: ClassVar[str] = "standin"

    seed: int = Field(0, description="Run seed, part of every draw.")
    seconds_per_prompt: float = Field(0.0, ge=0.0, description="Pause per prompt (0: instant).")

    _word_ids: list[list[int]] = PrivateAttr(default_factory=list)
    _response_header: str = PrivateAttr(default="")
    _fixed_ids: dict[str, list[int]] = PrivateAttr(default_factory=dict)

    @property
    def model_name(self) -> str:
        # Part of every store key: a stand-in result is never read back as a real model's.
        return f"{STAND_IN}:{self.model}"

    @property
    def provenance_name(self) -> str:
        return f"{STAND_IN}:{model_label(self.model)}"

    def load(self) -> None:
        super().load()
        tok = self.tokenizer
        self._word_ids = [tok.encode(" " + word, add_special_tokens=False) for word in _WORDS]
        self._response_header = generation_header(tok)
        texts = {"fragment": FRAGMENT_QUERY, "unfinished": UNFINISHED_QUERY, "too_short": "Hi",
                 "no_letters": "1234 5678 ?", **{f"duplicate{i}": q for i, q in enumerate(DUPLICATE_QUERIES)}}
        self._fixed_ids = {name: tok.encode(text, add_special_tokens=False) for name, text in texts.items()}

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        if self.seconds_per_prompt:
            time.sleep(self.seconds_per_prompt * len(prompts))
        return [self._complete_one(prompt, spec) for prompt, spec in zip(prompts, sampling)]

    def _complete_one(self, prompt: PromptInput, spec: SamplingSpec) -> list[Completion]:
        key = (self.seed, spec.seed, spec.temperature, spec.max_tokens, prompt.token_ids)
        if spec.json_schema is not None:
            return [self._judge(key, i, spec) for i in range(spec.n)]
        tail = self.tokenizer.decode(list(prompt.token_ids[-16:]))
        if self._response_header and tail.endswith(self._response_header):
            mostly_failed = _unit("row", key) < RATES["row_mostly_failed"]
            return [self._response(key, i, spec, fail=mostly_failed and i < spec.n - 1) for i in range(spec.n)]
        return [self._query(key, i, spec) for i in range(spec.n)]

    def _text(self, key: Any, n_tokens: int, question: bool) -> list[int]:
        rng = random.Random(_unit("words", key))
        ids: list[int] = []
        while len(ids) < n_tokens:
            ids.extend(self._word_ids[rng.randrange(len(self._word_ids))])
        ids = ids[:n_tokens]
        if question and ids:
            ids = ids[: max(1, n_tokens - 1)] + self.tokenizer.encode("?", add_special_tokens=False)
        return ids

    def _finished(self, ids: list[int], spec: SamplingSpec) -> Completion:
        if len(ids) >= spec.max_tokens:
            ids = ids[: spec.max_tokens]
            return Completion(self.tokenizer.decode(ids), ids, "length")
        return Completion(self.tokenizer.decode(ids).strip(), ids, "stop")

    def _query(self, key: Any, i: int, spec: SamplingSpec) -> Completion:
        u = _unit("query", key, i)
        outcome = _pick(u, ("query_empty", "query_error", "query_truncated", "query_duplicate", "query_fragment",
                            "query_unfinished", "query_too_short", "query_no_letters", "query_near_duplicate"))
        if outcome == "query_error":
            return Completion("", [], "error", f"{STAND_IN}: engine error (injected)")
        if outcome == "query_empty":
            return Completion("", [], "stop")
        if outcome == "query_truncated":
            return self._finished(self._text((key, i), spec.max_tokens, question=False), spec)
        if outcome in ("query_duplicate", "query_near_duplicate"):
            which = int(_unit("dup", key, i) * len(DUPLICATE_QUERIES))
            if outcome == "query_duplicate":
                return self._finished(list(self._fixed_ids[f"duplicate{which}"]), spec)
            # A near duplicate differs in punctuation only: not an exact copy, the same embedding.
            text = near_duplicate(DUPLICATE_QUERIES[which], random.Random(_unit("near", key, i)))
            return self._finished(self.tokenizer.encode(text, add_special_tokens=False), spec)
        if outcome is not None:
            return Completion(self.tokenizer.decode(self._fixed_ids[outcome.removeprefix("query_")]),
                              list(self._fixed_ids[outcome.removeprefix("query_")]), "stop")
        n = min(long_tail_tokens(_unit("len", key, i), spec.max_tokens, 0.05), spec.max_tokens - 1)
        return self._finished(self._text((key, i), max(n, 4), question=True), spec)

    def _response(self, key: Any, i: int, spec: SamplingSpec, fail: bool) -> Completion:
        outcome = "response_error" if fail else _pick(
            _unit("response", key, i), ("response_empty", "response_blank", "response_error"))
        if outcome == "response_error":
            return Completion("", [], "error", f"{STAND_IN}: engine error (injected)")
        if outcome == "response_empty":
            return Completion("", [], "stop")
        if outcome == "response_blank":
            ids = self.tokenizer.encode("  \n ", add_special_tokens=False)
            return Completion("", ids, "stop")
        n = long_tail_tokens(_unit("len", key, i), spec.max_tokens, 0.12)
        return self._finished(self._text((key, i), n, question=False), spec)

    def _judge(self, key: Any, i: int, spec: SamplingSpec) -> Completion:
        if _unit("judge", key, i) < RATES["judge_unparsable"]:
            text = '{"answer": unfinished'
        else:
            text = json.dumps(schema_answer(spec.json_schema or {}, random.Random(_unit("answer", key, i))))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return Completion(text, ids, "stop")


def near_duplicate(query: str, rng: random.Random) -> str:
    """``query`` with commas put in and another ending: one of some hundreds of variants that
    differ from it (and mostly from each other) in punctuation only."""
    words = query.rstrip("?").split()
    for at in sorted(rng.sample(range(1, len(words) - 1), 2), reverse=True):
        words[at - 1] += ","
    return " ".join(words) + rng.choice(("?!", "!?", "??", "?!!"))


def schema_answer(schema: dict[str, Any], rng: random.Random) -> Any:
    """A value that follows ``schema`` (the subset the judge schemas use), drawn with ``rng``."""
    kind = schema.get("type")
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if kind == "object":
        return {name: schema_answer(sub, rng) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [schema_answer(schema.get("items", {}), rng) for _ in range(rng.randint(0, min(2, schema.get("maxItems", 2))))]
    if kind in ("number", "integer"):
        return rng.randint(1, 5)
    if kind == "boolean":
        return rng.random() < 0.5
    return f"{STAND_IN} text {rng.randrange(1000)}"


def generation_header(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the tokenizer's chat template adds to open the assistant's turn (its generation prompt)."""
    messages = [{"role": "user", "content": "x"}]
    try:
        opened = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        closed = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception:  # no chat template: every prompt is a query prompt
        return ""
    return opened[len(closed):] if opened.startswith(closed) else ""


class StandInScorer:
    """The reward model's stand-in: seeded scores, with NaN, ``gating_tokens_missing`` and tied rows.

    Same interface as :class:`magpie_dl.reward.scoring.RewardScorer` (``load``, ``unload``,
    ``tokenizer``, ``score_token_ids``); loads only ``model``'s tokenizer.
    """

    name_prefix: ClassVar[str] = STAND_IN

    def __init__(self, model: str, max_length: int, seed: int = 0) -> None:
        self.model, self.max_length, self.seed = model, max_length, seed
        self.tokenizer: Any = None
        self._turn_break = ""

    def load(self) -> None:
        from transformers import AutoTokenizer

        from magpie_dl.reward.scoring import conversation_token_ids

        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        # The text between the user's message and the assistant's: what splits a scored input.
        probe = self.tokenizer.decode(conversation_token_ids(self.tokenizer, "\x01", "\x02"))
        self._turn_break = probe.partition("\x01")[2].partition("\x02")[0]

    def unload(self) -> None:
        self.tokenizer = None

    def score_token_ids(
        self, sequences: list[list[int]], done: Callable[[list[int], int], None] | None = None
    ) -> list[Scored]:
        from magpie_dl.reward.scoring import Scored

        results = []
        for ids in sequences:
            text = self.tokenizer.decode(ids)
            user = text.partition(self._turn_break)[0] if self._turn_break else text
            truncated = len(ids) > self.max_length
            num_tokens = min(len(ids), self.max_length)
            row_u, u = _unit("row", self.seed, user), _unit("score", self.seed, text)
            if u < RATES["score_nan"]:
                results.append(Scored(None, num_tokens, truncated, non_finite_score(float("nan"))))
                continue
            if u < RATES["score_nan"] + RATES["score_gating_missing"]:
                results.append(Scored(None, num_tokens, truncated, GATING_TOKENS_MISSING))
                continue
            if row_u < RATES["row_all_tied"]:
                score = round(_unit("tie", self.seed, user), 4)
            elif row_u < RATES["row_all_tied"] + RATES["row_some_tied"]:
                score = 0.25 if u < 0.5 else 0.5
            else:
                score = round(2 * _unit("value", self.seed, text) - 1, 6)
            results.append(Scored(score, num_tokens, truncated))
        if done is not None:  # the live progress counts what was scored, as the real scorer reports it
            done(list(range(len(sequences))), sum(r.num_tokens for r in results))
        return results


class StandInEmbedder:
    """The sentence encoder's stand-in: a seeded unit vector per text, the same for texts that
    differ only in case, spacing and punctuation (so the stand-in's near duplicates are found)."""

    dim = 64

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def encode(self, texts: list[str]) -> Any:
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
            rng = np.random.default_rng(int(_unit("embed", self.seed, words) * 2**63))
            vector = rng.standard_normal(self.dim)
            out[i] = vector / np.linalg.norm(vector)
        return out


__all__ = ["RATES", "STAND_IN", "StandInBackend", "StandInEmbedder", "StandInScorer", "long_tail_tokens",
           "schema_answer"]
