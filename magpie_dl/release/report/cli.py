"""``python -m magpie_dl.release.report OUT_DIR`` (console script ``magpie-dl-report``): (re)write the card and the report."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magpie_dl.release.report.card import write_card
from magpie_dl.release.report.load import load_output
from magpie_dl.release.report.page import write_report

if TYPE_CHECKING:
    from magpie_dl.release.export import Summary


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
    """``python -m magpie_dl.release.report OUT_DIR``: (re)write README.md and report.html."""
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

