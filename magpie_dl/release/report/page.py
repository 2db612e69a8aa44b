"""The run report (``report.html``): one self-contained page from ``templates/report.html.j2``.

No scripts, no external requests (a Content-Security-Policy enforces it): the facts of
the card plus the plots, embedded as PNGs. Every value is autoescaped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from magpie_dl.release.export import atomic_write_text
from magpie_dl.recipe.reasons import RESPONSE_STATUSES
from magpie_dl.release.report.facts import (
    _asked_text,
    _assistant_text,
    _fmt_stats,
    _num,
    _short,
    chosen_longer_share,
    default_pretty_name,
    example_pairs,
    left_out_reasons,
    margin_quantiles,
    recipe_steps,
    run_models,
    score_table,
    stage_counts,
    public_config,
    query_prompt_facts,
)
from magpie_dl.release.report.load import RunOutput, column_values, load_output
from magpie_dl.release.report.plots import make_plots
from magpie_dl.release.report.render import environment
from magpie_dl.scrub import REDACTED, scrub, scrub_text

if TYPE_CHECKING:
    from magpie_dl.release.export import Summary

REPORT_FILENAME = "report.html"
EXAMPLE_CHARS = 4000  # per text in the report's example pairs


def render_report(run: RunOutput) -> str:
    """The report as one self-contained HTML document."""
    cfg = scrub(public_config(run.config))  # the report is published beside the card: no local paths
    models = scrub(run_models(run))
    examples = _left_out_examples(run)
    share = chosen_longer_share(run)
    plots = make_plots(run)
    page = environment(autoescape=True).get_template("report.html.j2").render(
        title=default_pretty_name(run),
        out_dir=run.out_dir.name,
        written=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        stages=stage_counts(run.summary, run.selection),
        reasons=[(reason, n, meaning, _short(examples.get(reason, ""), 200))
                 for reason, n, meaning in left_out_reasons(run.summary)],
        responses=[(status, n, RESPONSE_STATUSES.get(status, ""))
                   for status, n in sorted((run.summary.get("response_status") or {}).items(), key=lambda kv: -kv[1])],
        scores=[(name, _fmt_stats(stats) if stats else ["0", "-", "-", "-", "-"]) for name, stats in score_table(run)],
        share=None if share is None else f"{share:.0%}",
        margin_quantiles=margin_quantiles(run),
        plots=plots,
        examples=[_report_example(row) for row in example_pairs(run, k=5)],
        models=models,
        recipe=recipe_steps(cfg, models, query_prompt_facts(run)),
        config_yaml=yaml.safe_dump(cfg, sort_keys=False),
    )
    page = scrub_text(page, mask=REDACTED)
    for plot in plots:
        if plot.png_base64:
            page = page.replace(f"@@PLOT:{plot.key}@@", f"data:image/png;base64,{plot.png_base64}")
    return page


def _report_example(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "margin": _num(row.get("score_margin")),
        "instruction": _short(_asked_text(row), EXAMPLE_CHARS),
        "sides": [
            {
                "name": side,
                "index": str(row.get(f"{side}_index")),
                "score": _num(row.get(f"{side}_score")),
                "text": _short(_assistant_text(row.get(side)), EXAMPLE_CHARS),
            }
            for side in ("chosen", "rejected")
        ],
    }


def _left_out_examples(run: RunOutput) -> dict[str, str]:
    reasons = column_values(run.left_out, "pair_status") or []
    texts = column_values(run.left_out, "instruction") or [""] * len(reasons)
    raws = column_values(run.left_out, "raw_instruction") or [None] * len(reasons)
    found: dict[str, str] = {}
    for reason, text, raw in zip(reasons, texts, raws, strict=True):
        # An empty cleaned query says nothing; show what the model wrote instead.
        found.setdefault(reason, text or (f"raw: {raw}" if raw else ""))
    return found



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
    atomic_write_text(path, render_report(run))
    return path
