"""``magpie-dl-review push|pull`` (also ``python -m magpie_dl.review``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from magpie_dl.review.client import DEFAULT_BATCH_SIZE, ENV_API_KEY, ENV_API_URL, MAX_BATCH_SIZE, ReviewError
from magpie_dl.review.pull import pull_reviewed
from magpie_dl.review.push import push_to_argilla

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magpie-dl-review", allow_abbrev=False,
        description=f"Review DPO pairs in Argilla ({ENV_API_URL} / {ENV_API_KEY} from the environment).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    push = commands.add_parser("push", help="push a saved DPO DatasetDict to an Argilla review dataset")
    pull = commands.add_parser("pull", help="write a reviewed DPO DatasetDict from submitted reviews")
    for sub in (push, pull):
        sub.add_argument("--input", required=True, type=Path, help="DPO dataset saved with save_to_disk")
        sub.add_argument("--dataset-name", required=True, help="Argilla dataset name")
        sub.add_argument("--workspace", default=None, help="Argilla workspace (default: the user's first)")
    push.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"records per request (max {MAX_BATCH_SIZE})"
    )
    pull.add_argument("--output", required=True, type=Path, help="where to save the reviewed DatasetDict")
    pull.add_argument("--ties", choices=("drop", "keep"), default="drop", help="what to do with pairs judged a tie")
    pull.add_argument("--drop-unreviewed", action="store_true", help="keep only pairs someone reviewed")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # httpx and the SDK log every request at INFO; keep the output to our own progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("argilla.sdk").setLevel(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the CLI prints its own summary lines
    try:
        if args.command == "push":
            print(push_to_argilla(args.input, args.dataset_name, args.workspace, args.batch_size))
        else:
            _, report = pull_reviewed(
                args.input,
                args.dataset_name,
                output=args.output,
                workspace=args.workspace,
                ties=args.ties,
                keep_unreviewed=not args.drop_unreviewed,
            )
            print(report.format())
            print(f"reviewed dataset written to {args.output}")
    except ReviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
