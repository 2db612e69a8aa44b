"""The curation recipe's tail alone at full size: what its global phase costs at N queries.

A full-size curation run spends an hour on 2 CPUs in its streaming steps before the global
steps start. This runs only the tail of ``pipelines/magpie_instructions.py`` (the same steps
and branch: ``columns_read`` / ``set_aside`` -> near-duplicates (stand-in embeddings) ->
selection, then the join of the set-aside rows and the curation export) on N whole rows:
copies of a real run's rows (``instructions.jsonl`` and ``left_out.jsonl`` of a scale run, each
copy with its own uuid and query), sampled as ``benchmarks/scale.py`` samples a run (PSS of the
process tree, the driver's anonymous PSS, disk).

    .venv/bin/python benchmarks/global_phase.py ROWS_DIR 300000 --out /tmp/bench/tail-300k

What it leaves out: the upstream steps' workers, which in a real run stay alive through the
global phase (~230-310 MiB of anonymous PSS each, measured by scale.py), and the rows the
driver buffers while they stream.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from distilabel.steps import GeneratorStep

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class CopiedRows(GeneratorStep):
    """``num_rows`` rows cycling over the rows of ``source`` (JSON-lines files), each with its own
    uuid and query (so that the near-duplicate search sees distinct queries)."""

    sources: list[str]
    num_rows: int

    @property
    def outputs(self) -> list[str]:
        return list(json.loads(Path(self.sources[0]).read_text().splitlines()[0]))

    def process(self, offset: int = 0):  # type: ignore[override]
        templates = [json.loads(line) for path in self.sources for line in Path(path).read_text().splitlines()]
        for row in templates:
            row.pop("selection_reason", None)  # the selection writes it again
        for start in range(0, self.num_rows, self.batch_size):
            stop = min(start + self.batch_size, self.num_rows)
            rows = [{**templates[i % len(templates)], "uuid": f"copy-{i:09d}",
                     "instruction": f"{templates[i % len(templates)]['instruction']} (copy {i})"}
                    for i in range(start, stop)]
            yield rows, stop == self.num_rows


def run_tail(rows_dir: Path, n: int, out: Path) -> None:
    """The recipe's tail on ``n`` copied rows; the release written under ``out/release``."""
    from distilabel.pipeline import Pipeline

    from magpie_dl.release.curation import write_outputs
    from magpie_dl.release.export import discard_loaded_copy
    from magpie_dl.run.driver import run_pipeline
    from magpie_dl.steps.curation import CuratedSelection, NearDuplicateTagging
    from magpie_dl.steps.set_aside import set_aside_for

    sources = [str(rows_dir / "instructions.jsonl"), str(rows_dir / "left_out.jsonl")]
    with Pipeline(name="curation-tail", cache_dir=out / "cache" / "distilabel") as pipeline:
        # Batches of 500 rows, as the scale preset's steps before the global ones make.
        source = CopiedRows(name="rows", sources=sources, num_rows=n, batch_size=500)
        near_dups = NearDuplicateTagging(name="near_duplicates", stand_in=True)
        select = CuratedSelection(name="selection", keep_rejected=True, target_size=n // 3, seed=0,
                                  report_path=str(out / "selection.json"))
        read, aside = set_aside_for(near_dups, select, batch_size=500)
        source >> [read, aside]
        read >> near_dups >> select
    rows = run_pipeline(pipeline, n)
    (out / ".release-tail").mkdir(parents=True, exist_ok=True)  # scale.py times the export from here
    print(json.dumps(dict(zip(("selected", "rejected"), write_outputs(rows, out / ".release-tail")))))
    discard_loaded_copy(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows_dir", type=Path, help="A curation run's output (instructions.jsonl, left_out.jsonl).")
    parser.add_argument("n", type=int)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--min-available-mib", type=float, default=3000)
    args = parser.parse_args()
    if args.child:
        run_tail(args.rows_dir, args.n, args.out)
        return
    from benchmarks.scale import run_measured

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "benchmarks.global_phase", str(args.rows_dir.resolve()), str(args.n),
           "--out", str(args.out), "--child"]
    result = run_measured(cmd, args.out, args.out.with_suffix(".log"), min_available_mib=args.min_available_mib,
                          env={"DISTILABEL_LOG_LEVEL": "WARNING"})  # as the recipe's driver sets it
    result["rows"] = args.n
    args.out.with_suffix(".json").write_text(json.dumps(result))
    shutil.rmtree(args.out, ignore_errors=True)
    summary = {k: v for k, v in result["summary"].items() if k != "row_cost"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
