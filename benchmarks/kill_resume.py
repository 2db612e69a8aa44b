"""Kill and resume at scale: SIGKILL a recipe's run at random moments, rerun, same dataset.

1. An uninterrupted run into ``WORK/baseline`` (its wall time and export phase are the
   scale the kill moments are drawn on).
2. Into ``WORK/killed``: the same command, SIGKILLed (the whole process group: driver,
   step workers, queue manager) ``--kills`` times at random moments, each drawn
   uniformly over the baseline's step phase, and one more inside its export phase (the
   release being written); after each kill, nothing may have been published.
3. The same command once more, to the end: exit 0, and ``scripts/compare_runs.py``
   must find the dataset equal to the baseline's.

Each run is sampled like ``benchmarks/scale.py`` (disk included: what killed runs leave
behind), and ``WORK.json`` records every kill's moment, the progress then, and the
resumed run's reuse line.

    .venv/bin/python benchmarks/kill_resume.py dpo 20000 --work /tmp/bench/kill20k --kills 4
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale import DEFAULT_ARGS, PIPELINES, recipe_command, run_measured  # noqa: E402

PUBLISHED = ("dataset", "summary.json", "instructions.jsonl")


def published(out: Path) -> list[str]:
    """What a run has published in ``out`` (empty: nothing)."""
    return [name for name in PUBLISHED if (out / name).exists()]


def kill_moments(baseline: dict[str, Any], kills: int, rng: random.Random) -> list[float]:
    """``kills`` moments over the baseline's step phase, then one inside its export."""
    s = baseline["summary"]
    steps_end = s.get("release_seen_s") or s["wall_s"]
    moments = sorted(rng.uniform(0.05 * steps_end, 0.95 * steps_end) for _ in range(kills))
    if s.get("release_seen_s") is not None and s.get("export_s"):
        moments.append(rng.uniform(s["release_seen_s"], s["release_seen_s"] + 0.9 * s["export_s"]))
    return moments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=sorted(PIPELINES))
    parser.add_argument("rows", type=int)
    parser.add_argument("--work", type=Path, required=True, help="Scratch directory (removed first).")
    parser.add_argument("--kills", type=int, default=4, help="Kills during the steps (one more in the export).")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--recipe-args", nargs=argparse.REMAINDER, default=DEFAULT_ARGS)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    base, killed = args.work / "baseline", args.work / "killed"
    rng = random.Random(args.seed)

    baseline = run_measured(recipe_command(args.recipe, args.rows, base, args.recipe_args), base, args.work / "baseline.log")
    assert baseline["summary"]["returncode"] == 0, f"baseline failed: {baseline['summary']}"
    print(f"baseline: {baseline['summary']['wall_s']} s, export {baseline['summary'].get('export_s')} s", flush=True)

    cmd = recipe_command(args.recipe, args.rows, killed, args.recipe_args)
    record: dict[str, Any] = {"baseline": baseline["summary"], "kills": []}
    for i, moment in enumerate(kill_moments(baseline, args.kills, rng)):
        run = run_measured(cmd, killed, args.work / f"kill{i}.log", kill_after=moment)
        s = run["summary"]
        last = run["samples"][-1] if run["samples"] else {}
        entry = {"at_s": round(moment, 1), "killed": s["killed"], "returncode": s["returncode"],
                 "progress": last.get("progress"), "export_started": s["release_seen_s"] is not None,
                 "published_after": published(killed), "disk_after_b": s["final_disk_out_b"]}
        record["kills"].append(entry)
        print(f"kill {i}: {entry}", flush=True)
        # A run killed before it published leaves nothing published (no earlier release here).
        if s["killed"]:
            assert not entry["published_after"], f"a killed run published {entry['published_after']}"

    final = run_measured(cmd, killed, args.work / "final.log")
    record["final"] = final["summary"]
    log = (args.work / "final.log").read_text()
    record["final_reused"] = (m.group(1) if (m := re.search(r"stored results reused: (.*)", log)) else None)
    assert final["summary"]["returncode"] == 0, f"the resumed run failed:\n{log[-2000:]}"
    compare = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_runs.py"), str(base), str(killed)],
                             capture_output=True, text=True, cwd=REPO)
    record["compare"] = (compare.stdout + compare.stderr).strip().splitlines()[-1:]
    record["identical"] = compare.returncode == 0
    args.work.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("final_reused", "compare", "identical")}, indent=1))
    assert record["identical"], compare.stdout + compare.stderr


if __name__ == "__main__":
    main()
