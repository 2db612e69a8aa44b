"""The dataset card (``README.md``): YAML metadata the Hub accepts, then the body from ``templates/card.md.j2``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from magpie_dl.release.export import atomic_write_text
from magpie_dl.recipe.provenance import stand_in_engine_note, stand_in_reward_note
from magpie_dl.reward.columns import circularity_note, scale_words
from magpie_dl.recipe.reasons import RESPONSE_STATUSES
from magpie_dl.release.report.facts import (
    TAGS,
    _asked_text,
    _assistant_text,
    _fmt_stats,
    _num,
    _short,
    chosen_longer_share,
    default_pretty_name,
    example_pairs,
    languages_of,
    left_out_reasons,
    license_for,
    margin_quantiles,
    pairing_words,
    public_config,
    query_prompt_facts,
    recipe_steps,
    run_models,
    score_table,
    size_category,
    stage_counts,
)
from magpie_dl.release.report.load import RunOutput, load_output
from magpie_dl.release.report.render import environment
from magpie_dl.scrub import REDACTED, scrub, scrub_text

if TYPE_CHECKING:
    from magpie_dl.release.export import Summary

CARD_FILENAME = "README.md"
EXAMPLE_CHARS = 1500  # per text in the card's example pairs

MAGPIE_CITATION = """@article{xu2024magpie,
  title={Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs with Nothing},
  author={Zhangchen Xu and Fengqing Jiang and Luyao Niu and Yuntian Deng and Radha Poovendran and Yejin Choi and Bill Yuchen Lin},
  year={2024},
  eprint={2406.08464},
  archivePrefix={arXiv},
  primaryClass={cs.CL}
}"""


def card_metadata(run: RunOutput, license: str | None = None, pretty_name: str | None = None) -> dict[str, Any]:
    """The card's YAML metadata as a plain dict, ``configs`` and ``dataset_info`` included."""
    from datasets import DatasetInfo
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    languages, _ = languages_of(run)
    models = run_models(run)
    lic = license or license_for(_writers(run))[0]
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



def render_card(run: RunOutput, license: str | None = None, pretty_name: str | None = None, repo_id: str | None = None) -> str:
    """The full README.md text: YAML metadata, then the card body."""
    meta = scrub(card_metadata(run, license, pretty_name))
    cfg = scrub(public_config(run.config))
    models = scrub(run_models(run))
    queries = query_prompt_facts(run)
    _, license_note = (meta["license"], None) if license else license_for(_writers(run))
    _, language_note = languages_of(run)
    reward_note = stand_in_reward_note(str((run.config.get("reward") or {}).get("model") or ""))
    engine_note = stand_in_engine_note(cfg)
    repo = repo_id or (cfg.get("output") or {}).get("push_to_hub")
    share = chosen_longer_share(run)
    columns = list(next(iter(run.pairs.values())).column_names) if run.pairs else []
    body = environment(autoescape=False).get_template("card.md.j2").render(
        meta=meta,
        pairs=run.num_pairs,
        splits=", ".join(f"{name}: {len(split)}" for name, split in run.pairs.items()),
        notes=[n for n in (engine_note, license_note, language_note, reward_note) if n],
        recipe=recipe_steps(cfg, models, queries),
        models=models,
        stages=stage_counts(run.summary, run.selection),
        reasons=left_out_reasons(run.summary),
        scores=[(name, _fmt_stats(stats) if stats else ["0", "-", "-", "-", "-"]) for name, stats in score_table(run)],
        share=None if share is None else f"{share:.0%}",
        margin_quantiles=margin_quantiles(run),
        pairing=pairing_words(cfg),
        examples=[_card_example(row) for row in example_pairs(run)],
        columns=", ".join(f"`{c}`" for c in columns) or "(none)",
        score_scale=" ".join(filter(None, (scale_words(columns), circularity_note(models["reward"])))),
        response_statuses="; ".join(f"`{k}`: {v}" for k, v in RESPONSE_STATUSES.items()),
        repo=repo,
        hub_name=repo or "YOUR-NAME/DATASET-NAME",
        limitations=limitations(run, models, cfg, engine_note, reward_note, share),
        tagged=bool(set(columns) & {"difficulty", "task_category", "input_quality"}),
        pre_query_template=queries["pre_query_template"],
        config_yaml=yaml.safe_dump(cfg, sort_keys=False).rstrip(),
        citation=MAGPIE_CITATION,
    )
    body = scrub_text(body, mask=REDACTED)
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()}\n---\n\n{body}"


def _writers(run: RunOutput) -> list[str]:
    """The models whose text the dataset holds (queries and responses), as configured: their licences apply."""
    cfg = run.config
    generator = (cfg.get("generator") or {}).get("model") or "unknown"
    if cfg.get("instructions"):
        generator = run_models(run)["instructions"]  # the writers the rows record
    return [generator, (cfg.get("responses") or {}).get("model") or generator]


def limitations(run: RunOutput, models: Mapping[str, str], cfg: Mapping[str, Any], engine_note: str | None,
                reward_note: str | None, share: float | None) -> list[str]:
    """What a user of the pairs should know before training on them, from this run's facts."""
    found = []
    if engine_note or reward_note:
        found.append("The scores (and with the stand-in engine, the texts) are placeholders: see the notes above. "
                     "Do not train on this dataset.")
    writers = ", ".join(f"`{m}`" for m in dict.fromkeys((models["instructions"], models["responses"])))
    found += [
        f"Every instruction and response is machine-written ({writers}) "
        "and may be wrong, unsafe or biased; nothing here was checked by a person.",
        f"`chosen` / `rejected` are picked by the scores of one reward model (`{models['reward']}`): its "
        "preferences and blind spots, not human judgements.",
    ]
    if share is not None:
        found.append(f"Reward models tend to prefer longer answers; here the chosen answer is the longer one in "
                     f"{share:.0%} of pairs.")
    columns = set(next(iter(run.pairs.values())).column_names) if run.pairs else set()
    if not ({"difficulty", "task_category", "llama_guard_2"} & columns):
        found.append("The queries were not tagged, selected or filtered for safety, difficulty or near-duplicates "
                     "(the curation recipe, `pipelines/magpie_instructions.py`, does that; pass its output with "
                     "`--instructions`); only exact duplicates were removed.")
    return found


def _card_example(row: Mapping[str, Any]) -> dict[str, Any]:
    def text(value: str) -> str:
        return scrub_text(_short(value, EXAMPLE_CHARS), mask=REDACTED)

    return {
        "margin": _num(row.get("score_margin")),
        "instruction": text(_asked_text(row)),
        "chosen_index": row.get("chosen_index"),
        "chosen_score": _num(row.get("chosen_score")),
        "chosen": text(_assistant_text(row.get("chosen"))),
        "rejected_index": row.get("rejected_index"),
        "rejected_score": _num(row.get("rejected_score")),
        "rejected": text(_assistant_text(row.get("rejected"))),
    }


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
    atomic_write_text(path, render_card(run, license, pretty_name, repo_id))
    return path
