"""The dataset card (``README.md``) and the run report (``report.html``) of an output directory.

Both are derived from what a run leaves on disk (``dataset/``, ``left_out/``,
``summary.json``, ``config.yaml``) and nothing else, so they can be regenerated at any
time with ``python -m magpie_dl.release.report OUT_DIR``.

- The card is what the Hub shows: YAML metadata the Hub accepts (license, task
  categories, a size category computed from the row count, tags, language, ``configs``
  and ``dataset_info`` in the form ``datasets.push_to_hub`` writes), then the recipe, the
  models, the counts at each stage, every reason a row was left out, score statistics,
  a few example pairs and the resolved config.
- The report is one self-contained HTML file (no scripts, no external requests; a
  Content-Security-Policy enforces it) with the same facts plus embedded PNG plots.

Split by job: :mod:`.load` reads a run, :mod:`.facts` computes what is said about it,
:mod:`.plots` draws, :mod:`.card` and :mod:`.page` fill the Jinja2 templates in
``templates/`` (the HTML one autoescaped), :mod:`.cli` writes both files.

Secrets never reach either file (:mod:`magpie_dl.scrub`): config values under
secret-looking keys are redacted, and any value of a secret environment variable is
replaced wherever it appears in the text.
"""

from magpie_dl.recipe.reasons import LEFT_OUT_REASONS, RESPONSE_STATUSES
from magpie_dl.release.report.card import CARD_FILENAME, MAGPIE_CITATION, card_metadata, render_card, write_card
from magpie_dl.release.report.cli import main, write_card_and_report
from magpie_dl.release.report.facts import (
    DIFFICULTY_ORDER,
    MARGIN_PERCENTILES,
    QUALITY_ORDER,
    TAGS,
    Stats,
    chosen_longer_share,
    default_pretty_name,
    example_lines,
    example_pairs,
    input_config_counts,
    languages_of,
    left_out_reasons,
    length_gaps,
    license_for,
    margin_quantiles,
    models_of,
    recipe_steps,
    run_models,
    score_table,
    size_category,
    stage_counts,
)
from magpie_dl.release.report.load import RunOutput, _assistant_lengths, load_output
from magpie_dl.release.report.page import REPORT_FILENAME, render_report, write_report
from magpie_dl.release.report.plots import (
    AFTER_COLOR,
    BEFORE_COLOR,
    CHOSEN_COLOR,
    MISSING,
    REJECTED_COLOR,
    SELECTED_COLOR,
    Plot,
    make_plots,
)
from magpie_dl.scrub import REDACTED

__all__ = [
    "AFTER_COLOR", "BEFORE_COLOR", "CARD_FILENAME", "CHOSEN_COLOR", "DIFFICULTY_ORDER", "LEFT_OUT_REASONS",
    "MAGPIE_CITATION", "MARGIN_PERCENTILES", "MISSING", "QUALITY_ORDER", "REDACTED", "REJECTED_COLOR", "REPORT_FILENAME",
    "RESPONSE_STATUSES", "SELECTED_COLOR", "TAGS", "Plot", "RunOutput", "Stats", "_assistant_lengths",
    "card_metadata", "chosen_longer_share", "default_pretty_name", "example_lines", "example_pairs", "input_config_counts",
    "languages_of", "left_out_reasons", "length_gaps", "license_for", "load_output", "main", "make_plots",
    "margin_quantiles", "models_of",
    "recipe_steps", "render_card", "render_report", "run_models", "score_table",
    "size_category", "stage_counts", "write_card", "write_card_and_report", "write_report",
]
