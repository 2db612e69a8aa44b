"""What a card and a report say about a run: sizes, models, licences, languages, counts, statistics, examples."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magpie_dl.paths import MANIFEST
from magpie_dl.recipe.pairing import MEAN_MINUS_2SD, MIN
from magpie_dl.recipe.reasons import LEFT_OUT_REASONS, UNDESCRIBED
from magpie_dl.release.report.load import RunOutput, column_values, load_output
from magpie_dl.curation.tagging import DIFFICULTY_LEVELS, QUALITY_LEVELS

if TYPE_CHECKING:
    from datasets import Dataset

# Hub vocabularies (https://huggingface.co/docs/hub/datasets-cards and
# .../repositories-licenses). Size buckets are upper-exclusive powers of ten.
_SIZE_BUCKETS: tuple[tuple[float, str], ...] = (
    (1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
    (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"), (1e12, "100B<n<1T"),
)
# Generated text inherits the terms of the model that wrote it. Lower-cased hub id prefix
# -> Hub license id; anything else (including local paths) is "other" with a note.
_MODEL_LICENSES: tuple[tuple[str, str], ...] = (
    ("meta-llama/llama-3.3-", "llama3.3"),
    ("meta-llama/llama-3.2-", "llama3.2"),
    ("meta-llama/llama-3.1-", "llama3.1"),
    ("meta-llama/meta-llama-3.1-", "llama3.1"),
    ("meta-llama/meta-llama-3-", "llama3"),
    ("google/gemma-", "gemma"),
    ("huggingfacetb/smollm2-", "apache-2.0"),
    ("huggingfacetb/smollm-", "apache-2.0"),
    ("mistralai/mistral-7b-instruct-", "apache-2.0"),
    ("microsoft/phi-3", "mit"),
)
LOCAL = " (local)"  # after the folder name of a local model or path that has no hub id
TAGS = ("synthetic", "magpie", "dpo", "preference", "distilabel")

# The judge's scales, easiest / poorest first (the tagging module owns them).
DIFFICULTY_ORDER = DIFFICULTY_LEVELS
QUALITY_ORDER = QUALITY_LEVELS


def size_category(num_rows: int) -> str:
    """The Hub's ``size_categories`` bucket for a row count."""
    for upper, label in _SIZE_BUCKETS:
        if num_rows < upper:
            return label
    return "n>1T"


def models_of(cfg: Mapping[str, Any], instruction_models: Sequence[str] = ()) -> dict[str, str]:
    """Role -> model reference, as configured.

    With ``instructions`` set the run paired a given instruction set, so the query writer
    is whatever the rows record (``instruction_models``), not the configured generator.
    """
    generator = (cfg.get("generator") or {}).get("model") or "unknown"
    writers = public_model_name(generator)
    if cfg.get("instructions"):
        writers = (", ".join(public_model_name(m) for m in instruction_models)
                   or f"unknown (instructions given: {public_path(str(cfg['instructions']))})")
    return {
        "instructions": writers,
        "responses": public_model_name((cfg.get("responses") or {}).get("model") or generator),
        "reward": public_model_name((cfg.get("reward") or {}).get("model") or "unknown"),
    }


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "~", "./", "../")) or ref.count("/") > 1 or Path(ref).is_dir()


def public_path(ref: str) -> str:
    """A local path as a published file may show it: its last part and ``(local)``, never absolute."""
    return f"{Path(ref).expanduser().name or ref}{LOCAL}"


def public_model_name(ref: str) -> str:
    """The name a card gives the model at ``ref``: a hub id as is, a local directory by the hub id
    its manifest records (as the rows name it), else by its folder's name marked ``(local)``;
    never an absolute path."""
    if not _looks_like_path(ref):
        return ref  # a hub id ("org/name"), or a word such as "unknown"
    named = _manifest(ref).get("model")
    return named if isinstance(named, str) and named else public_path(ref)


def public_config(cfg: Any) -> Any:
    """``cfg`` with every local path in it named as :func:`public_model_name` names it."""
    if isinstance(cfg, Mapping):
        return {key: public_config(value) for key, value in cfg.items()}
    if isinstance(cfg, list):
        return [public_config(value) for value in cfg]
    if isinstance(cfg, str) and cfg.startswith(("/", "~")):
        return public_model_name(cfg)
    return cfg


def _manifest(ref: str) -> dict[str, Any]:
    """A local model directory's manifest (:data:`~magpie_dl.paths.MANIFEST`); ``{}`` when none."""
    try:
        found = json.loads((Path(ref).expanduser() / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def model_license(ref: str) -> str | None:
    """The Hub licence id a local model's manifest records (``{"license": ...}``), if any."""
    found = _manifest(ref).get("license")
    return found if isinstance(found, str) and found else None


def run_models(run: RunOutput) -> dict[str, str]:
    """``models_of`` for a run, with the query writers recorded in its rows."""
    writers = input_config_counts(run.pairs.values(), "input_generator")
    return models_of(run.config, [name for name, _ in writers.most_common()])


def input_config_counts(splits: Iterable[Dataset], name: str) -> Counter[str]:
    """How many rows of ``splits`` record each value of ``gen_input_configs.<name>`` (None values left out)."""
    import pyarrow.compute as pc

    found: Counter[str] = Counter()
    for split in splits:
        if "gen_input_configs" not in split.column_names:
            continue
        configs = split.data.column("gen_input_configs")
        if name not in {field.name for field in configs.type}:
            continue
        # Only the one field, counted in Arrow: a 1M-row run has 1M config structs.
        counts = pc.value_counts(pc.struct_field(configs, name)).to_pylist()
        found.update({str(c["values"]): c["counts"] for c in counts if c["values"]})
    return found


def license_for(models: Iterable[str]) -> tuple[str, str | None]:
    """(Hub license id, note) for text written by ``models``.

    A known hub model family maps to its license; anything else gives ``other`` with a
    note, because guessing a license for someone's data is worse than saying so.
    """
    found: dict[str, str] = {}
    for model in models:
        name = public_model_name(str(model))
        ref = name.lower()
        found[name] = model_license(str(model)) or next(
            (lic for prefix, lic in _MODEL_LICENSES if ref.startswith(prefix)), "")
    licenses = set(found.values())
    if len(licenses) == 1 and "" not in licenses:
        (only,) = licenses
        return only, None
    unknown = sorted(m for m, lic in found.items() if not lic)
    if unknown:
        return "other", f"the license of the text written by {', '.join(unknown)} is not known to this tool; set it by hand"
    listed = ", ".join(f"{m} ({lic})" for m, lic in sorted(found.items()))
    return "other", f"the generating models have different licenses: {listed}"


def languages_of(run: RunOutput) -> tuple[list[str], str | None]:
    """Hub language codes for the kept rows, with a note when they are assumed."""
    column = run.pair_column("language")
    if not column:
        return ["en"], "no language column: English assumed (the recipe's queries are English)"
    counts = Counter(str(v).lower() for v in column if v)
    # Languages under 1% of rows are detector noise more often than real content.
    codes = sorted(code for code, n in counts.items() if n >= 0.01 * len(column) and re.fullmatch(r"[a-z]{2,3}", code))
    return (codes or ["en"]), (None if codes else "language column holds no ISO codes: English assumed")


@dataclass(frozen=True)
class Stats:
    """n, mean, median, min, max of a list of numbers (None-free)."""

    n: int
    mean: float
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[Any]) -> Stats | None:
        clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not clean:
            return None
        return cls(len(clean), statistics.fmean(clean), statistics.median(clean), min(clean), max(clean))


def score_table(run: RunOutput) -> list[tuple[str, Stats | None]]:
    """Score, margin and length statistics of the kept pairs."""
    return [
        ("chosen score", Stats.of(run.pair_column("chosen_score") or [])),
        ("rejected score", Stats.of(run.pair_column("rejected_score") or [])),
        ("score margin", Stats.of(run.pair_column("score_margin") or [])),
        ("chosen length (chars)", Stats.of(run.assistant_lengths("chosen"))),
        ("rejected length (chars)", Stats.of(run.assistant_lengths("rejected"))),
        ("length gap, chosen - rejected (chars)", Stats.of(length_gaps(run))),
    ]


# The margin quantiles the card and the report show (percent).
MARGIN_PERCENTILES = (5, 10, 25, 50, 75, 90, 95)


def quantiles(values: Iterable[Any], percents: Sequence[int] = MARGIN_PERCENTILES) -> list[float] | None:
    """The ``percents`` quantiles of the finite numbers in ``values`` (linear interpolation between
    order statistics, numpy's default); None when there are none."""
    clean = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not clean:
        return None
    found = []
    for percent in percents:
        position = (len(clean) - 1) * percent / 100
        low = math.floor(position)
        high = min(low + 1, len(clean) - 1)
        found.append(clean[low] + (clean[high] - clean[low]) * (position - low))
    return found


def margin_quantiles(run: RunOutput) -> list[tuple[str, str]]:
    """(``p5``, value) ... for the kept pairs' score margins; empty without pairs."""
    found = quantiles(run.pair_column("score_margin") or [])
    return [(f"p{p}", _num(v)) for p, v in zip(MARGIN_PERCENTILES, found or [], strict=False)]


def length_gaps(run: RunOutput) -> list[int]:
    """Characters of each kept pair's chosen answer minus its rejected one's (empty when they do not line up)."""
    chosen, rejected = run.assistant_lengths("chosen"), run.assistant_lengths("rejected")
    if len(chosen) != len(rejected):
        return []
    return [c - r for c, r in zip(chosen, rejected, strict=True)]


def chosen_longer_share(run: RunOutput) -> float | None:
    """Share of pairs whose chosen answer is longer: reward models are known to favour length."""
    gaps = length_gaps(run)
    return sum(gap > 0 for gap in gaps) / len(gaps) if gaps else None


def rejected_policy(cfg: Mapping[str, Any]) -> str:
    """The run's ``pairing.rejected`` (``min`` for a config written before the setting existed)."""
    return str((cfg.get("pairing") or {}).get("rejected") or MIN)


def pairing_words(cfg: Mapping[str, Any]) -> str:
    """How ``chosen`` and ``rejected`` were picked, in a few words, for the card's first lines."""
    policy = rejected_policy(cfg)
    if policy == MIN:
        return "the best and worst answers become `chosen` and `rejected`"
    return f"the best answer becomes `chosen` and `rejected` is picked by `pairing.rejected: {policy}` (see Recipe)"


def stage_counts(summary: Mapping[str, Any], selection: Mapping[str, Any] | None = None) -> list[tuple[str, int, str]]:
    """(stage, count, detail) from the run summary (and selection, when it ran), in pipeline order."""
    splits = summary.get("splits") or {}
    statuses = summary.get("response_status") or {}
    left = summary.get("left_out") or {}
    selected: list[tuple[str, int, str]] = []
    if selection:
        dropped = ", ".join(f"{k}: {v}" for k, v in (selection.get("dropped") or {}).items())
        selected = [
            ("tagged instructions (selection input)", int(selection.get("input_rows", 0)), ""),
            ("selected instructions", int(selection.get("selected_rows", 0)), f"dropped: {dropped}" if dropped else ""),
        ]
    failed = int(summary.get("requests_failed") or 0)
    return selected + [
        ("instructions generated" if not selection else "instructions paired", int(summary.get("instructions", 0)), ""),
        *([("requests failed after retries", failed, "published with allow_failed_requests; a rerun retries them")]
          if failed else []),
        ("usable instructions", int(summary.get("usable_instructions", 0)), "after cleaning and exact-duplicate removal"),
        ("responses", int(summary.get("responses", 0)), ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))),
        ("pairs kept", int(summary.get("pairs_kept", 0)), ", ".join(f"{k}: {v}" for k, v in sorted(splits.items()))),
        ("rows left out", sum(int(v) for v in left.values()), "see below for each reason"),
    ]


def left_out_reasons(summary: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(reason, count, meaning) for every reason in the summary, most frequent first."""
    left = summary.get("left_out") or {}
    return [
        (reason, int(count), LEFT_OUT_REASONS.get(reason, UNDESCRIBED))
        for reason, count in sorted(left.items(), key=lambda kv: (-int(kv[1]), kv[0]))
    ]


def example_pairs(run: RunOutput, k: int = 3) -> list[dict[str, Any]]:
    """Up to ``k`` train pairs spread over the margin range: largest, median, smallest."""
    split_name = "train" if "train" in run.pairs and len(run.pairs["train"]) else next(
        (name for name, split in run.pairs.items() if len(split)), None
    )
    if split_name is None:
        return []
    split = run.pairs[split_name]
    margins = column_values(split, "score_margin") or [0.0] * len(split)
    order = sorted(range(len(split)), key=lambda i: (-(margins[i] if margins[i] is not None else -math.inf), i))
    if len(order) <= k:
        picks = order
    else:
        picks = sorted({order[round(j * (len(order) - 1) / (k - 1))] for j in range(k)}, key=order.index) if k > 1 else order[:1]
    return [split[i] for i in picks]


def example_lines(out_dir: Path | str, k: int = 2, width: int = 160) -> list[str]:
    """``k`` example pairs of a finished run, a few short lines each, for the terminal summary."""
    lines: list[str] = []
    for i, row in enumerate(example_pairs(load_output(out_dir), k), 1):
        lines += [
            f"example {i} (margin {_num(row.get('score_margin'))}): {_one_line(_asked_text(row), width)}",
            f"  chosen:   {_one_line(_assistant_text(row.get('chosen')), width)}",
            f"  rejected: {_one_line(_assistant_text(row.get('rejected')), width)}",
        ]
    return lines


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3].rstrip() + "..."


def _assistant_text(messages: Sequence[Mapping[str, Any]] | None) -> str:
    return str(messages[-1].get("content") or "") if messages else ""


def _asked_text(row: Mapping[str, Any]) -> str:
    """What a pair's responses answer: the instruction, or a multi-turn pair's last user turn
    (marked with its turn number)."""
    messages = row.get("chosen") or []
    if len(messages) > 2:
        return f"[turn {len(messages) // 2}] {messages[-2].get('content') or ''}"
    return str(row.get("instruction") or "")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + f" ... [{len(text) - limit} more characters]"



def default_pretty_name(run: RunOutput) -> str:
    """The card's title: the recipe, and the model that wrote the responses when it has a hub id."""
    model = models_of(run.config)["responses"]  # config only: cheap
    if model.endswith(LOCAL) or model == "unknown":
        return "Magpie DPO pairs (dpo_100k recipe)"
    return f"Magpie DPO pairs from {model.rstrip('/').split('/')[-1]} (dpo_100k recipe)"


def query_prompt_facts(run: RunOutput) -> dict[str, Any]:
    """What the kept rows record of the query prompt: ``family`` (the resolved one, most rows'),
    ``pre_query_template`` (most rows') and ``system_block`` (that template holds a system turn)."""
    family = input_config_counts(run.pairs.values(), "family").most_common(1)
    template = input_config_counts(run.pairs.values(), "pre_query_template").most_common(1)
    text = template[0][0] if template else None
    return {
        "family": family[0][0] if family else None,
        "pre_query_template": text,
        # Every family's system turn is introduced by the word (<|im_start|>system, ...system<|end_header_id|>).
        "system_block": bool(text and "system" in text.lower()),
    }



def recipe_steps(cfg: Mapping[str, Any], models: Mapping[str, str] | None = None,
                 queries: Mapping[str, Any] | None = None) -> list[str]:
    """The recipe in words, with this run's parameters (``models``: role -> model, see ``run_models``;
    ``queries``: what the rows record of the query prompt, see ``query_prompt_facts``)."""
    gen = cfg.get("generator") or {}
    resp = cfg.get("responses") or {}
    rew = cfg.get("reward") or {}
    backend = cfg.get("backend") or {}
    out = cfg.get("output") or {}
    models = models or models_of(cfg)
    queries = queries or {}
    if gen.get("system_prompt") or gen.get("system_prompts"):
        system = "a fixed system prompt" if gen.get("system_prompt") else "system prompts drawn from a list"
    elif gen.get("control_task"):
        system = f"the `{gen['control_task']}` control system prompt"
    elif queries.get("system_block"):
        system = ("no system prompt of ours, but the model's own default system block, which its template "
                  "writes when a conversation has none (see `gen_input_configs.pre_query_template`)")
    else:
        system = "no system prompt"
    family = queries.get("family") or gen.get("family", "auto")
    ban = ", markdown heading tokens banned at the first position" if gen.get("ban_first_token_markdown") else ""
    if cfg.get("instructions"):
        # A given (usually curated) set: the queries were written and selected elsewhere.
        first = (f"**Instructions**: read from `{public_config(str(cfg['instructions']))}` (written by `{models['instructions']}`); "
                 "rows the source marks unusable are left out with the reason.")
    else:
        first = (f"**Instructions**: `{models['instructions']}` continues its own pre-query template "
                 f"(family `{family}`, {system}) {gen.get('num_instructions', '?')} times at "
                 f"temperature {gen.get('temperature')}, top_p {gen.get('top_p')}, max_tokens {gen.get('max_tokens')}"
                 f"{ban}; each query is cleaned (`raw_instruction` keeps the original) and exact duplicates are marked.")
    return [
        first,
        f"**Responses**: `{models['responses']}` answers each usable query {resp.get('num_generations')} times "
        f"(temperature {resp.get('temperature')}, top_p {resp.get('top_p')}, max_tokens {resp.get('max_tokens')}, "
        f"prompt style `{resp.get('prompt_style')}`) on the `{backend.get('kind')}` backend.",
        f"**Scores**: `{models['reward']}` scores every (instruction, response) pair, "
        f"inputs cut at {rew.get('max_length')} tokens.",
        "**Pairs**: among usable responses (non-empty, finished, scored) the highest score is `chosen` and "
        f"`rejected` is {_rejected_rule(rejected_policy(cfg))}; rows with fewer than two usable responses, all "
        f"scores tied, or a margin below {(cfg.get('pairing') or {}).get('min_margin', 0.0)} are left out with the reason.",
        f"**Split**: a seeded shuffle (seed {cfg.get('seed')}) puts {out.get('test_fraction')} of the pairs in `test`.",
    ]



def _rejected_rule(policy: str) -> str:
    if policy == MIN:
        return "the lowest (`pairing.rejected: min`, the released recipe's rule)"
    if policy == MEAN_MINUS_2SD:
        return ("the response scored closest to mean - 2 sd of the row's usable scores, among those scored below "
                "`chosen` (`pairing.rejected: mean_minus_2sd`, Xiao et al., 2025, arXiv 2502.16825; "
                "population sd; ties go to the lower score, then the lower index; with 5 or fewer usable responses "
                "this is always the lowest, so the pairs equal `min`'s; `gen_response_configs.pairing_rejected` records it)")
    return f"picked by `pairing.rejected: {policy}`"


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def _fmt_stats(stats: Stats) -> list[str]:
    return [str(stats.n), _num(stats.mean), _num(stats.median), _num(stats.low), _num(stats.high)]
