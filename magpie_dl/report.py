"""The dataset card (``README.md``) and the run report (``report.html``) of an output directory.

Both are derived from what a run leaves on disk (``dataset/``, ``left_out/``,
``summary.json``, ``config.yaml``) and nothing else, so they can be regenerated at any
time with ``python -m magpie_dl.report OUT_DIR``.

- The card is what the Hub shows: YAML metadata the Hub accepts (license, task
  categories, a size category computed from the row count, tags, language, ``configs``
  and ``dataset_info`` in the form ``datasets.push_to_hub`` writes), then the recipe, the
  models, the counts at each stage, every reason a row was left out, score statistics,
  a few example pairs and the resolved config.
- The report is one self-contained HTML file (no scripts, no external requests; a
  Content-Security-Policy enforces it) with the same facts plus embedded PNG plots.

Secrets never reach either file: config values under secret-looking keys are redacted,
and any value of a secret environment variable (``magpie_dl.config.secret_values()``)
is replaced wherever it appears in the text.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from magpie_dl.config import secret_values
from magpie_dl.export import _atomic_write_text
from magpie_dl.pairing import ALL_TIED, FEWER_THAN_TWO, LOW_MARGIN
from magpie_dl.provenance import stand_in_reward_note
from magpie_dl.tagging import DIFFICULTY_LEVELS, QUALITY_LEVELS

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from magpie_dl.export import Summary

CARD_FILENAME = "README.md"
REPORT_FILENAME = "report.html"
REDACTED = "<redacted>"

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
)
TAGS = ("synthetic", "magpie", "dpo", "preference", "distilabel")

# Why a row has no pair, in words. Instruction reasons come from the query cleaner and
# the generator step (prefixed ``instruction_`` by the pairing step).
LEFT_OUT_REASONS: dict[str, str] = {
    "instruction_empty": "the cleaned query was empty",
    "instruction_too_short": "the cleaned query was shorter than the cleaner's minimum",
    "instruction_too_long": "the cleaned query was longer than the cleaner's maximum",
    "instruction_unprintable": "too many unprintable characters in the query",
    "instruction_no_letters": "the query has no letters",
    "instruction_fragment": "cutting the model's own answer off the query left a piece of a sentence",
    "instruction_truncated": "the query hit max_tokens before it ended",
    "instruction_generation_failed": "the engine failed to produce the query",
    "instruction_duplicate": "an exact copy (ignoring case and spacing) of an earlier query",
    FEWER_THAN_TWO: "fewer than two responses were usable (non-empty, finished, scored)",
    ALL_TIED: "every usable response got the same score, so there is no preference",
    LOW_MARGIN: "chosen - rejected score was below pairing.min_margin",
}
RESPONSE_STATUSES: dict[str, str] = {
    "ok": "usable: non-empty, finished on its own, scored",
    "empty": "empty text",
    "truncated": "hit max_tokens (never chosen)",
    "failed": "the engine reported a failure",
    "no_score": "the reward model gave no finite score",
}
# The judge's scales, easiest / poorest first (the tagging module owns them).
DIFFICULTY_ORDER = DIFFICULTY_LEVELS
QUALITY_ORDER = QUALITY_LEVELS
MISSING = "(none)"
_SECRET_KEY = re.compile(r"(^|_)(token|hf_token|api_key|apikey|password|secret|access_token)$", re.IGNORECASE)

MAGPIE_CITATION = """@article{xu2024magpie,
  title={Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs with Nothing},
  author={Zhangchen Xu and Fengqing Jiang and Luyao Niu and Yuntian Deng and Radha Poovendran and Yejin Choi and Bill Yuchen Lin},
  year={2024},
  eprint={2406.08464},
  archivePrefix={arXiv},
  primaryClass={cs.CL}
}"""


# --------------------------------------------------------------------------- inputs


@dataclass
class RunOutput:
    """Everything a card or report is made from, read once from an output directory."""

    out_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    pairs: DatasetDict
    left_out: Dataset | None
    # What instruction selection did (SelectionReport.to_dict()), when the run selected.
    selection: dict[str, Any] | None = None

    @property
    def num_pairs(self) -> int:
        return sum(len(split) for split in self.pairs.values())

    def pair_column(self, name: str) -> list[Any] | None:
        """A column over all splits (train first), or None when the dataset lacks it."""
        return _concat(_column(split, name) for split in self.pairs.values())

    def all_column(self, name: str) -> list[Any] | None:
        """A column over kept and left-out rows: every instruction that reached the output."""
        kept = self.pair_column(name)
        if kept is None:
            return None
        left = _column(self.left_out, name) if self.left_out is not None else None
        return kept + (left or [None] * (len(self.left_out) if self.left_out is not None else 0))

    def assistant_lengths(self, side: str) -> list[int]:
        """Characters in the assistant turn of ``chosen`` or ``rejected``, over all splits."""
        return _concat(_assistant_lengths(split, side) for split in self.pairs.values()) or []


def load_output(
    out_dir: Path | str,
    cfg_dict: Mapping[str, Any] | None = None,
    summary: Summary | Mapping[str, Any] | None = None,
) -> RunOutput:
    """Read an output directory; ``cfg_dict`` / ``summary`` override the files when given."""
    from datasets import DatasetDict

    out = Path(out_dir)
    if not (out / "dataset").exists():
        raise FileNotFoundError(f"{out / 'dataset'} does not exist: is {out} the output of a run?")
    if cfg_dict is None:
        cfg_path = out / "config.yaml"
        cfg_dict = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.exists() else {}
    if summary is None:
        summary_path = out / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    elif not isinstance(summary, Mapping):
        summary = dict(summary.__dict__)
    left_out = _load_split(out / "left_out") if (out / "left_out").exists() else None
    splits = json.loads((out / "dataset" / "dataset_dict.json").read_text())["splits"]
    pairs = DatasetDict({name: _load_split(out / "dataset" / name) for name in splits})
    return RunOutput(out, dict(cfg_dict), dict(summary), pairs, left_out, _find_selection(out, cfg_dict, summary))


def _find_selection(out: Path, cfg: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The selection report of the instructions this run paired, if there is one.

    The curation recipe writes ``selection.json`` beside the ``dataset/`` that
    ``--instructions`` points at; a copy in the output directory or a ``selection`` entry
    in the summary wins.
    """
    if summary.get("selection"):
        return dict(summary["selection"])
    candidates = [out / "selection.json"]
    source = cfg.get("instructions")
    if isinstance(source, str) and source and Path(source).exists():
        candidates += [Path(source) / "selection.json", Path(source).parent / "selection.json"]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _load_split(path: Path) -> Dataset:
    """One saved split; an empty one saved without columns reads as an empty dataset.

    ``datasets`` writes a zero-row, zero-column dataset (no pairs kept, or nothing left
    out) with no data files and then cannot load it back (IndexError); such a split is
    legitimately empty, so it is read as empty instead of failing the report.
    """
    from datasets import Dataset

    state = json.loads((path / "state.json").read_text())
    if not state.get("_data_files"):
        return Dataset.from_dict({})
    return Dataset.load_from_disk(str(path))


def _column(ds: Dataset | None, name: str) -> list[Any] | None:
    # Straight from Arrow: the report must not materialise 100K rows of responses.
    if ds is None or name not in ds.column_names:
        return None
    return ds.data.column(name).to_pylist()


def _concat(parts: Iterable[list[Any] | None]) -> list[Any] | None:
    out: list[Any] | None = None
    for part in parts:
        if part is not None:
            out = (out or []) + part
    return out


def _assistant_lengths(ds: Dataset, side: str) -> list[int] | None:
    """Characters in the last message of each row's ``side`` conversation (None: no column)."""
    import numpy as np
    import pyarrow.compute as pc

    if side not in ds.column_names:
        return None
    lengths: list[int] = []
    # Arrow all the way: 100K conversations are never turned into Python strings.
    for chunk in ds.data.column(side).chunks:
        flat = pc.list_flatten(chunk)
        if len(flat) == 0:
            continue
        parents = pc.list_parent_indices(chunk).to_numpy()
        is_last = np.append(parents[1:] != parents[:-1], True)  # last message of each row
        contents = pc.struct_field(flat.filter(is_last), "content")
        lengths.extend(n for n in pc.utf8_length(contents).to_pylist() if n is not None)
    return lengths


# --------------------------------------------------------------------------- facts


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
    writers = generator
    if cfg.get("instructions"):
        writers = ", ".join(instruction_models) or f"unknown (instructions given: {cfg['instructions']})"
    return {
        "instructions": writers,
        "responses": (cfg.get("responses") or {}).get("model") or generator,
        "reward": (cfg.get("reward") or {}).get("model") or "unknown",
    }


def run_models(run: RunOutput) -> dict[str, str]:
    """``models_of`` for a run, with the query writers recorded in its rows."""
    import pyarrow.compute as pc

    writers: Counter[str] = Counter()
    for split in run.pairs.values():
        if "gen_input_configs" not in split.column_names:
            continue
        configs = split.data.column("gen_input_configs")
        if "input_generator" not in {field.name for field in configs.type}:
            continue
        # Only the one field, counted in Arrow: a 1M-row run has 1M config structs.
        counts = pc.value_counts(pc.struct_field(configs, "input_generator")).to_pylist()
        writers.update({str(c["values"]): c["counts"] for c in counts if c["values"]})
    return models_of(run.config, [name for name, _ in writers.most_common()])


def license_for(models: Iterable[str]) -> tuple[str, str | None]:
    """(Hub license id, note) for text written by ``models``.

    A known hub model family maps to its license; anything else gives ``other`` with a
    note, because guessing a license for someone's data is worse than saying so.
    """
    found: dict[str, str] = {}
    for model in models:
        ref = str(model).lower()
        found[str(model)] = next((lic for prefix, lic in _MODEL_LICENSES if ref.startswith(prefix)), "")
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


def scrub(value: Any, secrets: Sequence[str] | None = None) -> Any:
    """A copy of ``value`` with secret-looking keys redacted and secret values replaced.

    The config holds no secrets by design; this is the second line of defence, because a
    card is public the moment it is pushed.
    """
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if _SECRET_KEY.search(str(key)) and item not in (None, "") else scrub(item, secrets))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub(item, secrets) for item in value]
    if isinstance(value, str):
        return scrub_text(value, secrets)
    return value


def scrub_text(text: str, secrets: Sequence[str] | None = None) -> str:
    """``text`` with every secret environment value replaced."""
    for secret in sorted(secret_values() if secrets is None else secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


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
    ]


def chosen_longer_share(run: RunOutput) -> float | None:
    """Share of pairs whose chosen answer is longer: reward models are known to favour length."""
    chosen, rejected = run.assistant_lengths("chosen"), run.assistant_lengths("rejected")
    if not chosen or len(chosen) != len(rejected):
        return None
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


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
    return selected + [
        ("instructions generated" if not selection else "instructions paired", int(summary.get("instructions", 0)), ""),
        ("usable instructions", int(summary.get("usable_instructions", 0)), "after cleaning and exact-duplicate removal"),
        ("responses", int(summary.get("responses", 0)), ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))),
        ("pairs kept", int(summary.get("pairs_kept", 0)), ", ".join(f"{k}: {v}" for k, v in sorted(splits.items()))),
        ("rows left out", sum(int(v) for v in left.values()), "see below for each reason"),
    ]


def left_out_reasons(summary: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(reason, count, meaning) for every reason in the summary, most frequent first."""
    left = summary.get("left_out") or {}
    return [
        (reason, int(count), LEFT_OUT_REASONS.get(reason, "not described by this tool; see the pipeline step that set it"))
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
    margins = _column(split, "score_margin") or [0.0] * len(split)
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
            f"example {i} (margin {_num(row.get('score_margin'))}): {_one_line(row['instruction'], width)}",
            f"  chosen:   {_one_line(_assistant_text(row.get('chosen')), width)}",
            f"  rejected: {_one_line(_assistant_text(row.get('rejected')), width)}",
        ]
    return lines


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3].rstrip() + "..."


def _assistant_text(messages: Sequence[Mapping[str, Any]] | None) -> str:
    return str(messages[-1].get("content") or "") if messages else ""


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + f" ... [{len(text) - limit} more characters]"


# --------------------------------------------------------------------------- card


def card_metadata(run: RunOutput, license: str | None = None, pretty_name: str | None = None) -> dict[str, Any]:
    """The card's YAML metadata as a plain dict, ``configs`` and ``dataset_info`` included."""
    from datasets import DatasetInfo
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    languages, _ = languages_of(run)
    models = run_models(run)
    lic = license or license_for([models["instructions"], models["responses"]])[0]
    data = DatasetCardData(
        license=lic,
        language=languages,
        multilinguality="multilingual" if len(languages) > 1 else "monolingual",
        size_categories=[size_category(run.num_pairs)],
        task_categories=["text-generation"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=["original"],
        pretty_name=pretty_name or default_pretty_name(run),
        tags=list(TAGS),
    )
    # configs / dataset_info written by datasets' own serialisers, in the layout that
    # Dataset(Dict).push_to_hub uses (data/<split>-*), so a push only refines byte sizes.
    splits = [name for name, split in run.pairs.items()]
    MetadataConfigs({"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}}).to_dataset_card_data(data)
    first = next(iter(run.pairs.values()), None)
    if first is not None and first.column_names:
        split_dict = SplitDict()
        for name, split in run.pairs.items():
            split_dict.add(SplitInfo(name=name, num_bytes=int(split.data.nbytes), num_examples=len(split)))
        size = sum(int(s.data.nbytes) for s in run.pairs.values())
        info = DatasetInfo(features=first.features, splits=split_dict, dataset_size=size)
        DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data.to_dict()


def default_pretty_name(run: RunOutput) -> str:
    model = models_of(run.config)["responses"].rstrip("/").split("/")[-1]  # config only: cheap
    return f"Magpie DPO pairs ({model})"


def render_card(run: RunOutput, license: str | None = None, pretty_name: str | None = None, repo_id: str | None = None) -> str:
    """The full README.md text: YAML metadata, then the card body."""
    meta = scrub(card_metadata(run, license, pretty_name))
    cfg = scrub(run.config)
    models = scrub(run_models(run))
    _, license_note = (meta["license"], None) if license else license_for([models["instructions"], models["responses"]])
    _, language_note = languages_of(run)
    repo = repo_id or (cfg.get("output") or {}).get("push_to_hub") or "path/to/this/dataset"
    pairs = run.num_pairs
    splits = {name: len(split) for name, split in run.pairs.items()}

    lines: list[str] = [f"# {meta['pretty_name']}", ""]
    lines += [
        f"Preference (DPO) pairs built with the Magpie recipe ([Xu et al., 2024](https://arxiv.org/abs/2406.08464)): "
        f"an aligned chat model writes user queries from its own pre-query template, answers each several times, "
        f"a reward model scores every answer, and the best and worst answers become `chosen` and `rejected`. "
        f"**{pairs} pairs** ({', '.join(f'{k}: {v}' for k, v in splits.items())}). "
        f"Made with [distilabel](https://github.com/argilla-io/distilabel) by magpie_dl; "
        f"`report.html` beside this card in the output directory has the plots.",
        "",
    ]
    reward_note = stand_in_reward_note(str((cfg.get("reward") or {}).get("model") or ""))
    notes = [n for n in (license_note, language_note, reward_note) if n]
    if notes:
        lines += ["> **Notes:** " + "; ".join(notes) + ".", ""]

    lines += ["## Recipe", ""] + [f"{i}. {step}" for i, step in enumerate(recipe_steps(cfg, models), 1)] + [""]
    lines += ["## Models", "", "| role | model |", "|---|---|"]
    lines += [f"| {role} | `{_md_cell(model)}` |" for role, model in models.items()] + [""]

    lines += ["## Counts at each stage", "", "| stage | rows | detail |", "|---|---:|---|"]
    lines += [f"| {stage} | {n} | {_md_cell(detail)} |" for stage, n, detail in stage_counts(run.summary, run.selection)] + [""]
    lines += ["## Rows left out", ""]
    reasons = left_out_reasons(run.summary)
    if reasons:
        lines += [
            "Rows without a pair are not dropped silently: they are in `left_out/` of the output directory "
            "with the reason in `pair_status`.",
            "",
            "| reason | rows | meaning |",
            "|---|---:|---|",
        ]
        lines += [f"| `{_md_cell(reason)}` | {n} | {_md_cell(meaning)} |" for reason, n, meaning in reasons]
    else:
        lines += ["Every instruction produced a pair."]
    lines += [""]

    lines += ["## Scores", "", "| | n | mean | median | min | max |", "|---|---:|---:|---:|---:|---:|"]
    for name, stats in score_table(run):
        lines.append(f"| {name} | " + (" | ".join(_fmt_stats(stats)) if stats else "0 | - | - | - | -") + " |")
    share = chosen_longer_share(run)
    if share is not None:
        lines += ["", f"The chosen answer is the longer one in {share:.0%} of pairs."]
    lines += [""]

    lines += ["## Example pairs", ""]
    examples = example_pairs(run)
    if not examples:
        lines += ["No pairs were kept.", ""]
    for i, row in enumerate(examples, 1):
        lines += [
            f"### Example {i} (margin {_num(row.get('score_margin'))})",
            "",
            "**Instruction**",
            "",
            *_fenced(scrub_text(_short(str(row.get("instruction") or ""), 1500))),
            "",
            f"**Chosen** (response {row.get('chosen_index')}, score {_num(row.get('chosen_score'))})",
            "",
            *_fenced(scrub_text(_short(_assistant_text(row.get("chosen")), 1500))),
            "",
            f"**Rejected** (response {row.get('rejected_index')}, score {_num(row.get('rejected_score'))})",
            "",
            *_fenced(scrub_text(_short(_assistant_text(row.get("rejected")), 1500))),
            "",
        ]

    columns = list(next(iter(run.pairs.values())).column_names) if run.pairs else []
    lines += ["## Columns", "", ", ".join(f"`{c}`" for c in columns) or "(none)", ""]
    lines += [
        "`rewards_armorm[i].score` is the reward of `responses[i]`; `chosen_index` / `rejected_index` point into "
        "`responses`; `response_status[i]` says whether a response could take part in a pair "
        "(" + "; ".join(f"`{k}`: {v}" for k, v in RESPONSE_STATUSES.items()) + "); `rating_errors[i]` says why a "
        "response has no score (`empty_response`, `non_finite_score:...`, or `gating_tokens_missing`: the cut at "
        "`reward.max_length` removed the assistant header ArmoRM gates on). "
        "`gen_input_configs` and `gen_response_configs` hold the exact prompt and sampling parameters of each row.",
        "",
    ]
    lines += ["## Usage", "", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset("{repo}")', 'pair = ds["train"][0]  # chosen / rejected: [{role, content}] x 2', "```", ""]
    lines += ["## Resolved config", "", *_fenced(yaml.safe_dump(cfg, sort_keys=False).rstrip(), "yaml"), ""]
    lines += ["## Citation", "", *_fenced(MAGPIE_CITATION, "bibtex"), ""]

    body = scrub_text("\n".join(lines))
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()}\n---\n\n{body}"


def recipe_steps(cfg: Mapping[str, Any], models: Mapping[str, str] | None = None) -> list[str]:
    """The recipe in words, with this run's parameters (``models``: role -> model, see ``run_models``)."""
    gen = cfg.get("generator") or {}
    resp = cfg.get("responses") or {}
    rew = cfg.get("reward") or {}
    backend = cfg.get("backend") or {}
    out = cfg.get("output") or {}
    models = models or models_of(cfg)
    system = "a fixed system prompt" if gen.get("system_prompt") else (
        f"the `{gen['control_task']}` control system prompt" if gen.get("control_task") else "no system prompt"
    )
    ban = ", markdown heading tokens banned at the first position" if gen.get("ban_first_token_markdown") else ""
    if cfg.get("instructions"):
        # A given (usually curated) set: the queries were written and selected elsewhere.
        first = (f"**Instructions**: read from `{cfg['instructions']}` (written by `{models['instructions']}`); "
                 "rows the source marks unusable are left out with the reason.")
    else:
        first = (f"**Instructions**: `{models['instructions']}` continues its own pre-query template "
                 f"(family `{gen.get('family', 'auto')}`, {system}) {gen.get('num_instructions', '?')} times at "
                 f"temperature {gen.get('temperature')}, top_p {gen.get('top_p')}, max_tokens {gen.get('max_tokens')}"
                 f"{ban}; each query is cleaned (`raw_instruction` keeps the original) and exact duplicates are marked.")
    return [
        first,
        f"**Responses**: `{models['responses']}` answers each usable query {resp.get('num_generations')} times "
        f"(temperature {resp.get('temperature')}, top_p {resp.get('top_p')}, max_tokens {resp.get('max_tokens')}, "
        f"prompt style `{resp.get('prompt_style')}`) on the `{backend.get('kind')}` backend.",
        f"**Scores**: `{models['reward']}` scores every (instruction, response) pair, "
        f"inputs cut at {rew.get('max_length')} tokens.",
        "**Pairs**: among usable responses (non-empty, finished, scored) the highest score is `chosen` and the lowest "
        f"`rejected`; rows with fewer than two usable responses, all scores tied, or a margin below "
        f"{(cfg.get('pairing') or {}).get('min_margin', 0.0)} are left out with the reason.",
        f"**Split**: a seeded shuffle (seed {cfg.get('seed')}) puts {out.get('test_fraction')} of the pairs in `test`.",
    ]


def _md_cell(value: Any) -> str:
    # Pipes and newlines would break a Markdown table row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fenced(text: str, lang: str = "text") -> list[str]:
    """A code fence longer than any backtick run inside ``text``, so content cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", text, fence]


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def _fmt_stats(stats: Stats) -> list[str]:
    return [str(stats.n), _num(stats.mean), _num(stats.median), _num(stats.low), _num(stats.high)]


def write_card(
    out_dir: Path | str,
    cfg_dict: Mapping[str, Any] | None = None,
    summary: Summary | Mapping[str, Any] | None = None,
    *,
    license: str | None = None,
    pretty_name: str | None = None,
    repo_id: str | None = None,
    run: RunOutput | None = None,
) -> Path:
    """Write ``out_dir/README.md``; returns its path.

    ``cfg_dict`` and ``summary`` default to ``config.yaml`` / ``summary.json`` in the
    directory. ``license`` overrides the one inferred from the models.
    """
    run = run or load_output(out_dir, cfg_dict, summary)
    path = Path(out_dir) / CARD_FILENAME
    _atomic_write_text(path, render_card(run, license, pretty_name, repo_id))
    return path


# --------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class Plot:
    """One figure of the report: a base64 PNG, or a note saying why there is none."""

    key: str
    title: str
    caption: str
    png_base64: str | None = None
    note: str | None = None


CHOSEN_COLOR, REJECTED_COLOR, BEFORE_COLOR, SELECTED_COLOR, AFTER_COLOR = "#2a9d8f", "#e76f51", "#8d99ae", "#e9c46a", "#264653"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    # Figure without pyplot: no global state, no GUI backend, safe inside a pipeline process.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    return fig, ax


def _overlaid_histogram(key: str, title: str, caption: str, xlabel: str, chosen: list[float], rejected: list[float]) -> Plot:
    import numpy as np

    if not chosen and not rejected:
        return Plot(key, title, caption, note="No kept pairs: nothing to plot.")
    values = np.asarray(chosen + rejected, dtype=float)
    bins = np.histogram_bin_edges(values, bins=min(40, max(5, int(math.sqrt(len(values))))))
    fig, ax = _figure()
    ax.hist(chosen, bins=bins, alpha=0.6, color=CHOSEN_COLOR, label=f"chosen (n={len(chosen)})")
    ax.hist(rejected, bins=bins, alpha=0.6, color=REJECTED_COLOR, label=f"rejected (n={len(rejected)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pairs")
    ax.legend()
    return Plot(key, title, caption, _png(fig))


def _histogram(key: str, title: str, caption: str, xlabel: str, values: list[float]) -> Plot:
    if not values:
        return Plot(key, title, caption, note="No kept pairs: nothing to plot.")
    fig, ax = _figure()
    ax.hist(values, bins=min(40, max(5, int(math.sqrt(len(values))))), color=AFTER_COLOR)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pairs")
    return Plot(key, title, caption, _png(fig))


def _value_counts(values: Iterable[Any]) -> Counter[str]:
    return Counter(MISSING if v is None else str(v) for v in values)


def _mix_plot(key: str, title: str, caption: str, series: Sequence[tuple[str, Mapping[str, int]]],
              order: Sequence[str] = ()) -> Plot:
    """Grouped horizontal bars: the share of each value in each series (e.g. before / after)."""
    import numpy as np

    series = [(label, counts) for label, counts in series if sum(counts.values())]
    if not series:
        return Plot(key, title, caption, note="No rows: nothing to plot.")
    first = series[0][1]
    seen = {v for _, counts in series for v in counts}
    known = [v for v in order if v in seen]
    labels = known + sorted((v for v in seen if v not in known), key=lambda v: (-first.get(v, 0), v))
    y = np.arange(len(labels))
    height = 0.8 / len(series)
    palettes = {1: [AFTER_COLOR], 2: [BEFORE_COLOR, AFTER_COLOR], 3: [BEFORE_COLOR, SELECTED_COLOR, AFTER_COLOR]}
    colors = palettes.get(len(series), [None] * len(series))
    fig, ax = _figure(6.4, max(2.4, 0.2 * len(series) * len(labels) + 1.4))
    for k, ((label, counts), color) in enumerate(zip(series, colors, strict=True)):
        total = sum(counts.values())
        offset = (k - (len(series) - 1) / 2) * height
        ax.barh(y + offset, [100 * counts.get(v, 0) / total for v in labels], height, color=color,
                label=f"{label} (n={total})")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("% of rows")
    # Below the axes: inside, the legend would hide the longest bars.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(3, len(series)), frameon=False)
    return Plot(key, title, caption, _png(fig))


def _before_after(key: str, title: str, caption: str, column: str, run: RunOutput, order: Sequence[str] = ()) -> Plot:
    """Share of each value among every instruction that reached the output and among kept pairs."""
    after_values = run.pair_column(column)
    if after_values is None:
        note = f"The dataset has no `{column}` column (the run did not tag it), so there is nothing to plot."
        return Plot(key, title, caption, note=note)
    return _mix_plot(key, title, caption, [
        ("all instructions", _value_counts(run.all_column(column) or [])),
        ("kept pairs", _value_counts(after_values)),
    ], order)


def _category_mix(run: RunOutput) -> Plot:
    """Task categories through the run: tagged pool, selected set (when selection ran), kept pairs."""
    title = "Task category mix"
    selection = run.selection or {}
    if selection.get("category_mix_before") and selection.get("category_mix_after"):
        after = run.pair_column("task_category")
        caption = ("Share of each task category in the tagged pool before selection, in the selected set, "
                   "and among the kept pairs.")
        series = [("before selection", selection["category_mix_before"]),
                  ("selected", selection["category_mix_after"])]
        if after is not None:
            series.append(("kept pairs", _value_counts(after)))
        return _mix_plot("task_category", title, caption, series)
    caption = ("Share of each task category among every instruction that reached the output "
               "(kept and left out) and among the kept pairs.")
    return _before_after("task_category", title, caption, "task_category", run)


def make_plots(run: RunOutput) -> list[Plot]:
    """Every figure of the report, in reading order."""
    chosen = [float(v) for v in run.pair_column("chosen_score") or [] if v is not None]
    rejected = [float(v) for v in run.pair_column("rejected_score") or [] if v is not None]
    margins = [float(v) for v in run.pair_column("score_margin") or [] if v is not None]
    chosen_chars = [float(n) for n in run.assistant_lengths("chosen")]
    rejected_chars = [float(n) for n in run.assistant_lengths("rejected")]
    return [
        _overlaid_histogram("scores", "Chosen vs rejected scores",
                            "Reward of the chosen and of the rejected answer of each kept pair.",
                            "reward score", chosen, rejected),
        _histogram("margin", "Score margin", "chosen - rejected score of each kept pair.", "margin", margins),
        _overlaid_histogram("lengths", "Response length, chosen vs rejected", "Characters in the assistant turn.",
                            "characters", chosen_chars, rejected_chars),
        _category_mix(run),
        _before_after("difficulty", "Difficulty", "Judged difficulty of the query, before and after pairing.",
                      "difficulty", run, DIFFICULTY_ORDER),
        _before_after("input_quality", "Input quality", "Judged quality of the query, before and after pairing.",
                      "input_quality", run, QUALITY_ORDER),
    ]


# --------------------------------------------------------------------------- report

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#1d232a}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f5f6f8;padding:.6em;white-space:pre-wrap;word-break:break-word;max-height:28em;overflow:auto}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(30em,1fr));gap:1.2em}
figure{margin:0;border:1px solid #e3e3e3;padding:.6em}figure img{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#555}.note{background:#fff6e0;border-left:4px solid #e9b949;padding:.6em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:.8em}.chosen h4{color:#1f7a6f}.rejected h4{color:#b5472b}
.muted{color:#666}
"""


def render_report(run: RunOutput) -> str:
    """The report as one self-contained HTML document."""
    cfg = scrub(run.config)
    models = scrub(run_models(run))
    e = html.escape
    parts: list[str] = []
    add = parts.append

    add(f"<h1>Run report: {e(default_pretty_name(run))}</h1>")
    add(f"<p class='muted'>Output directory <code>{e(str(run.out_dir))}</code>, "
        f"report written {e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>")

    add("<h2>Counts at each stage</h2><table><tr><th>stage</th><th>rows</th><th>detail</th></tr>")
    for stage, n, detail in stage_counts(run.summary, run.selection):
        add(f"<tr><td>{e(stage)}</td><td class='n'>{n}</td><td>{e(detail)}</td></tr>")
    add("</table>")

    add("<h2>Rows left out</h2>")
    reasons = left_out_reasons(run.summary)
    if reasons:
        examples = _left_out_examples(run)
        add("<table><tr><th>reason</th><th>rows</th><th>meaning</th><th>example instruction</th></tr>")
        for reason, n, meaning in reasons:
            add(f"<tr><td><code>{e(reason)}</code></td><td class='n'>{n}</td><td>{e(meaning)}</td>"
                f"<td>{e(_short(examples.get(reason, ''), 200))}</td></tr>")
        add("</table>")
    else:
        add("<p>Every instruction produced a pair.</p>")

    add("<h2>Responses</h2><table><tr><th>status</th><th>responses</th><th>meaning</th></tr>")
    for status, n in sorted((run.summary.get("response_status") or {}).items(), key=lambda kv: -kv[1]):
        add(f"<tr><td><code>{e(status)}</code></td><td class='n'>{n}</td><td>{e(RESPONSE_STATUSES.get(status, ''))}</td></tr>")
    add("</table>")

    add("<h2>Scores and lengths</h2><table><tr><th></th><th>n</th><th>mean</th><th>median</th><th>min</th><th>max</th></tr>")
    for name, stats in score_table(run):
        cells = _fmt_stats(stats) if stats else ["0", "-", "-", "-", "-"]
        add(f"<tr><td>{e(name)}</td>" + "".join(f"<td class='n'>{e(c)}</td>" for c in cells) + "</tr>")
    add("</table>")
    share = chosen_longer_share(run)
    if share is not None:
        add(f"<p>The chosen answer is the longer one in {share:.0%} of pairs.</p>")

    add("<h2>Plots</h2><div class='plots'>")
    plots = make_plots(run)
    for plot in plots:
        add(f"<figure id='plot-{e(plot.key)}'><h3>{e(plot.title)}</h3>")
        if plot.png_base64:
            # Placeholder keeps megabytes of base64 out of the secret scrub below.
            add(f"<img alt='{e(plot.title)}' data-plot='{e(plot.key)}' src='@@PLOT:{e(plot.key)}@@'>")
        else:
            add(f"<p class='note'>{_md_inline_to_html(plot.note or 'Not plotted.')}</p>")
        add(f"<figcaption>{e(plot.caption)}</figcaption></figure>")
    add("</div>")
    images = {plot.key: plot.png_base64 for plot in plots if plot.png_base64}

    add("<h2>Example pairs</h2>")
    examples = example_pairs(run, k=5)
    if not examples:
        add("<p>No pairs were kept.</p>")
    for i, row in enumerate(examples, 1):
        add(f"<h3>Example {i}: margin {e(_num(row.get('score_margin')))}</h3>")
        add(f"<pre class='instruction'>{e(_short(str(row.get('instruction') or ''), 4000))}</pre><div class='pair'>")
        for side in ("chosen", "rejected"):
            text = _short(_assistant_text(row.get(side)), 4000)
            add(f"<div class='{side}'><h4>{side}: response {e(str(row.get(f'{side}_index')))}, "
                f"score {e(_num(row.get(f'{side}_score')))}</h4><pre>{e(text)}</pre></div>")
        add("</div>")

    add("<h2>Models</h2><table><tr><th>role</th><th>model</th></tr>")
    add("".join(f"<tr><td>{e(role)}</td><td><code>{e(model)}</code></td></tr>" for role, model in models.items()))
    add("</table><h2>Recipe</h2><ol>")
    add("".join(f"<li>{_md_inline_to_html(step)}</li>" for step in recipe_steps(cfg, models)))
    add("</ol><h2>Resolved config</h2>")
    add(f"<pre>{e(yaml.safe_dump(cfg, sort_keys=False))}</pre>")

    body = scrub_text("\n".join(parts))
    for key, png in images.items():
        body = body.replace(f"@@PLOT:{e(key)}@@", f"data:image/png;base64,{png}")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
        # No scripts and no requests: anything the page tried to load would be blocked and show as an error.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        "<link rel='icon' href='data:,'>\n"
        f"<title>{e(default_pretty_name(run))}: run report</title>\n<style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _left_out_examples(run: RunOutput) -> dict[str, str]:
    reasons = _column(run.left_out, "pair_status") or []
    texts = _column(run.left_out, "instruction") or [""] * len(reasons)
    raws = _column(run.left_out, "raw_instruction") or [None] * len(reasons)
    found: dict[str, str] = {}
    for reason, text, raw in zip(reasons, texts, raws, strict=True):
        # An empty cleaned query says nothing; show what the model wrote instead.
        found.setdefault(reason, text or (f"raw: {raw}" if raw else ""))
    return found


def _md_inline_to_html(text: str) -> str:
    """Escape, then render the two inline marks the recipe steps use (**bold**, `code`)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def write_report(
    out_dir: Path | str,
    cfg_dict: Mapping[str, Any] | None = None,
    summary: Summary | Mapping[str, Any] | None = None,
    *,
    run: RunOutput | None = None,
) -> Path:
    """Write ``out_dir/report.html``; returns its path."""
    run = run or load_output(out_dir, cfg_dict, summary)
    path = Path(out_dir) / REPORT_FILENAME
    _atomic_write_text(path, render_report(run))
    return path


def write_card_and_report(
    out_dir: Path | str,
    cfg_dict: Mapping[str, Any] | None = None,
    summary: Summary | Mapping[str, Any] | None = None,
    shown_as: Path | str | None = None,
    **card_options: Any,
) -> tuple[Path, Path]:
    """Both files from one read of the output directory: what a run calls at its end.

    ``shown_as``: the directory the files will be published in, when ``out_dir`` is a staging copy.
    """
    run = load_output(out_dir, cfg_dict, summary)
    if shown_as is not None:
        run.out_dir = Path(shown_as)
    return write_card(out_dir, run=run, **card_options), write_report(out_dir, run=run)


def main(argv: list[str] | None = None) -> int:
    """``python -m magpie_dl.report OUT_DIR``: (re)write README.md and report.html."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="Output directory of a run (holds dataset/, summary.json, config.yaml).")
    parser.add_argument("--license", help="Hub license id for the card (default: inferred from the models).")
    parser.add_argument("--repo-id", help="Hub repo id used in the card's usage snippet.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        card, report = write_card_and_report(args.out_dir, license=args.license, repo_id=args.repo_id)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{card}\n{report}\n({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
