"""The curation recipe's card (``README.md``) and report (``report.html``): the curated
instruction set, what was dropped and why, the models by hub id, how to use it next.

Made from what the run leaves on disk (``dataset/``, ``selection.json``, ``config.yaml``),
as the DPO recipe's card and report are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from magpie_dl.release.export import atomic_write_text
from magpie_dl.release.report.facts import (
    DIFFICULTY_ORDER,
    QUALITY_ORDER,
    license_for,
    public_config,
    public_model_name,
    size_category,
)
from magpie_dl.release.report.plots import _mix_plot, _value_counts
from magpie_dl.release.report.render import environment
from magpie_dl.scrub import REDACTED, scrub, scrub_text

TAGS = ("synthetic", "magpie", "instructions", "distilabel")


def curation_models(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Role -> model id (local folders as ``name (local)``) of a curation run's config."""
    tagging = cfg.get("tagging") or {}
    roles = {
        "instructions": (cfg.get("generator") or {}).get("model"),
        "tags (judge)": tagging.get("judge_model"),
        "safety (guard)": tagging.get("guard_model"),
        "instruct reward": (cfg.get("reward") or {}).get("model") if (cfg.get("instruct_reward") or {}).get("enabled", True) else None,
        "near-duplicates (encoder)": (cfg.get("dedup") or {}).get("embedding_model"),
    }
    return {role: public_model_name(str(model)) for role, model in roles.items() if model}


def write_curation_card_and_report(out_dir: Path, cfg: Mapping[str, Any], selected: int, rejected: int) -> tuple[Path, Path]:
    """Write ``README.md`` and ``report.html`` of a curation run's output directory."""
    from datasets import load_from_disk
    from huggingface_hub import DatasetCardData

    out_dir = Path(out_dir)
    selection_path = out_dir / "selection.json"
    selection = json.loads(selection_path.read_text()) if selection_path.is_file() else {}
    dataset = load_from_disk(str(out_dir / "dataset")) if (out_dir / "dataset").exists() else None
    models = scrub(curation_models(cfg))
    lic, license_note = license_for([str((cfg.get("generator") or {}).get("model") or "unknown")])
    writer = models.get("instructions", "unknown")
    name = "Magpie instructions (magpie_instructions recipe)" if writer.endswith(" (local)") else (
        f"Magpie instructions from {writer.split('/')[-1]} (magpie_instructions recipe)")
    meta = DatasetCardData(
        license=lic, language=["en"], size_categories=[size_category(selected)], task_categories=["text-generation"],
        annotations_creators=["machine-generated"], language_creators=["machine-generated"],
        source_datasets=["original"], pretty_name=name, tags=list(TAGS),
    ).to_dict()
    columns = dataset.column_names if dataset is not None else []
    facts = {
        "meta": meta, "selected": selected, "rejected": rejected, "models": models,
        "notes": [n for n in (license_note,) if n],
        "dropped": sorted((selection.get("dropped") or {}).items(), key=lambda kv: -int(kv[1])),
        "input_rows": selection.get("input_rows"),
        "columns": ", ".join(f"`{c}`" for c in columns) or "(none)",
        "config_yaml": yaml.safe_dump(scrub(public_config(dict(cfg))), sort_keys=False).rstrip(),
    }
    body = environment(autoescape=False).get_template("curation_card.md.j2").render(**facts)
    card = f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()}\n---\n\n{body}"
    atomic_write_text(out_dir / "README.md", scrub_text(card, mask=REDACTED))

    plots = _curation_plots(selection, dataset)
    page = environment(autoescape=True).get_template("curation_report.html.j2").render(
        title=name, written=time.strftime("%Y-%m-%d %H:%M:%S %Z"), plots=plots, **facts)
    page = scrub_text(page, mask=REDACTED)
    for plot in plots:
        if plot.png_base64:
            page = page.replace(f"@@PLOT:{plot.key}@@", f"data:image/png;base64,{plot.png_base64}")
    atomic_write_text(out_dir / "report.html", page)
    return out_dir / "README.md", out_dir / "report.html"


def _curation_plots(selection: Mapping[str, Any], dataset: Any) -> list[Any]:
    def column(name: str) -> list[Any]:
        return dataset.data.column(name).to_pylist() if dataset is not None and name in dataset.column_names else []

    mix = [(label, selection[key]) for label, key in (("before selection", "category_mix_before"),
                                                      ("selected", "category_mix_after")) if selection.get(key)]
    return [
        _mix_plot("task_category", "Task category mix", "Share of each task category before and after selection.", mix),
        _mix_plot("difficulty", "Difficulty", "Judged difficulty of the selected queries.",
                  [("selected", _value_counts(column("difficulty")))] if column("difficulty") else [], DIFFICULTY_ORDER),
        _mix_plot("input_quality", "Input quality", "Judged quality of the selected queries.",
                  [("selected", _value_counts(column("input_quality")))] if column("input_quality") else [], QUALITY_ORDER),
    ]
