"""Kill and resume at scale: SIGKILL a recipe's run at random moments, rerun, same dataset.

1. Into ``WORK/killed``: the recipe's command, SIGKILLed (the whole process group: driver,
   step workers, queue manager) ``--kills`` times, each at a moment drawn uniformly over
   ``--window`` seconds from its start (default: the baseline's step phase); with
   ``--export-kill``, once more as soon as the release staging (``DIR/.release-PID``)
   appears, i.e. inside the export. After each kill nothing may have been published.
2. The same command once more, to the end: exit 0.
3. ``scripts/compare_runs.py`` must find its dataset equal to an uninterrupted run's:
   ``--baseline DIR`` (a run of the same command, e.g. ``benchmarks/scale.py ... --keep``,
   possibly still running: it is waited for), or one run here first into ``WORK/baseline``.

Each run is sampled like ``benchmarks/scale.py`` (disk included: what killed runs leave
behind), and ``WORK.json`` records every kill's moment, the progress then, and the
resumed run's reuse line.

    .venv/bin/python benchmarks/kill_resume.py dpo 20000 --work /tmp/bench/kill20k --kills 4 --export-kill
    .venv/bin/python benchmarks/scale.py dpo 20000 --out /tmp/bench/dpo-20k --keep &
    .venv/bin/python benchmarks/kill_resume.py dpo 20000 --work /tmp/bench/kill20k --baseline /tmp/bench/dpo-20k --window 240
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale import DEFAULT_ARGS, PIPELINES, recipe_command, run_measured  # noqa: E402

PUBLISHED = ("dataset", "summary.json", "instructions.jsonl")


def published(out: Path) -> list[str]:
    """What a run has published in ``out`` (empty: nothing)."""
    return [name for name in PUBLISHED if (out / name).exists()]


def release_state(out: Path) -> dict[str, int]:
    """What is published in ``out``, each with its modification time (a republish changes it)."""
    return {name: (out / name).stat().st_mtime_ns for name in published(out)}


def wait_for_baseline(base: Path, every: float = 10.0) -> None:
    """Wait until the baseline run has published and let go of its directory."""
    while not (published(base) and not any(p.name.startswith(".release-") for p in base.iterdir())):
        time.sleep(every)
    time.sleep(every)  # the run's last files (card, report) are published together; let it exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=sorted(PIPELINES))
    parser.add_argument("rows", type=int)
    parser.add_argument("--work", type=Path, required=True, help="Scratch directory (removed first).")
    parser.add_argument("--kills", type=int, default=4, help="Kills at random moments of the steps.")
    parser.add_argument("--window", type=float, help="Draw the kill moments over this many seconds (default: "
                        "the baseline's step phase).")
    parser.add_argument("--export-kill", action="store_true", help="One more kill, inside the export.")
    parser.add_argument("--baseline", type=Path, help="An uninterrupted run of the same command to compare with.")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--recipe-args", nargs=argparse.REMAINDER, default=DEFAULT_ARGS)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    killed = args.work / "killed"
    rng = random.Random(args.seed)
    record: dict[str, Any] = {"kills": []}

    base = args.baseline
    if base is None:
        base = args.work / "baseline"
        baseline = run_measured(recipe_command(args.recipe, args.rows, base, args.recipe_args), base,
                                args.work / "baseline.log")
        assert baseline["summary"]["returncode"] == 0, f"baseline failed: {baseline['summary']}"
        record["baseline"] = baseline["summary"]
        window = args.window or baseline["summary"].get("release_seen_s") or baseline["summary"]["wall_s"]
    else:
        assert args.window, "--baseline needs --window (its timings are not known here)"
        window = args.window

    cmd = recipe_command(args.recipe, args.rows, killed, args.recipe_args)
    moments: list[float | str] = sorted(rng.uniform(0.05 * window, 0.95 * window) for _ in range(args.kills))
    if args.export_kill:
        moments.append("export")
    for i, moment in enumerate(moments):
        before = release_state(killed) if killed.exists() else {}
        if moment == "export":
            run = run_measured(cmd, killed, args.work / f"kill{i}.log", kill_at_release=rng.uniform(0, 3))
        else:
            run = run_measured(cmd, killed, args.work / f"kill{i}.log", kill_after=moment)
        s = run["summary"]
        last = run["samples"][-1] if run["samples"] else {}
        entry = {"at_s": s["wall_s"], "killed": s["killed"], "returncode": s["returncode"],
                 "progress": last.get("progress"), "export_started": s["release_seen_s"] is not None,
                 "published_after": published(killed), "disk_after_b": s["final_disk_out_b"],
                 # What this run published (a run the kill came too late for has finished and published).
                 "published_by_it": sorted(n for n, m in release_state(killed).items() if before.get(n) != m)}
        record["kills"].append(entry)
        print(f"kill {i}: {entry}", flush=True)
        # A killed run publishes nothing: an earlier release (of a run that finished before its
        # kill) stays as it was.
        if s["killed"]:
            assert not entry["published_by_it"], f"a killed run published {entry['published_by_it']}"

    final = run_measured(cmd, killed, args.work / "final.log")
    record["final"] = final["summary"]
    log = (args.work / "final.log").read_text()
    record["final_reused"] = (m.group(1) if (m := re.search(r"stored results reused: (.*)", log)) else None)
    assert final["summary"]["returncode"] == 0, f"the resumed run failed:\n{log[-2000:]}"
    wait_for_baseline(base)
    compare = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_runs.py"), str(base), str(killed)],
                             capture_output=True, text=True, cwd=REPO)
    record["compare"] = (compare.stdout + compare.stderr).strip().splitlines()[-1:]
    record["identical"] = compare.returncode == 0
    args.work.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("final_reused", "compare", "identical")}, indent=1))
    assert record["identical"], compare.stdout + compare.stderr


if __name__ == "__main__":
    main()
