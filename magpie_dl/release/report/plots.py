"""The report's figures: PNGs drawn with matplotlib (no pyplot, no global state), embedded as base64."""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from magpie_dl.release.report.facts import DIFFICULTY_ORDER, QUALITY_ORDER, length_gaps
from magpie_dl.release.report.load import RunOutput

MISSING = "(none)"  # the bar of rows without a value


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
        note = (f"The dataset has no `{column}` column, so there is nothing to plot: the tag columns come from "
                "the curation recipe (`pipelines/magpie_instructions.py`): run it and pass its dataset with "
                "`--instructions`.")
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
        _histogram("length_gap", "Length gap", "Characters of the chosen answer minus the rejected one's, per kept "
                   "pair: right of 0, the reward model preferred the longer answer.", "characters",
                   [float(gap) for gap in length_gaps(run)]),
        _category_mix(run),
        _before_after("difficulty", "Difficulty", "Judged difficulty of the query, before and after pairing.",
                      "difficulty", run, DIFFICULTY_ORDER),
        _before_after("input_quality", "Input quality", "Judged quality of the query, before and after pairing.",
                      "input_quality", run, QUALITY_ORDER),
    ]
