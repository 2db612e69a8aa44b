"""Full-size runs of both recipes: wall time, CPU, memory and disk over time, export time.

Runs the recipe's own command (``pipelines/dpo_100k.py`` or
``pipelines/magpie_instructions.py``: the real distilabel pipeline, result store, export,
card and report) as a subprocess in its own process group, and samples it every second:

* memory: PSS summed over the whole process tree (the driver and every process distilabel
  forks), and its anonymous part (``benchmarks/proctree.py``);
* CPU: user + system seconds of the driver alone and of the whole tree (processes that
  ended are counted at their last sample; the tree total is also taken exactly from the
  kernel's rusage of waited-for children at the end);
* disk: bytes allocated under the output directory, under ``DIR/cache`` (the result store)
  and under ``DIR/cache/distilabel`` (distilabel's per-batch step data);
* progress: each step's row counter from the run's own store (``progress`` table), so the
  time per 1K rows early and late in a step shows any per-row cost that grows with the
  row index;
* phases: the steps' work (until the last counted row), distilabel's teardown (leaf
  parquet read back into a dataset), and the export (from the moment the release staging
  directory ``DIR/.release-PID`` appears to the end of the process: dataset, card, report,
  publish).

Each run writes one JSON file (the samples and a summary); ``--report`` prints the
Markdown tables BENCHMARKS.md carries from such files.

    .venv/bin/python benchmarks/scale.py dpo 10000 --out /tmp/bench/dpo-10k
    .venv/bin/python benchmarks/scale.py curation 300000 --out /tmp/bench/cur-300k
    .venv/bin/python benchmarks/scale.py dpo 150 --out /tmp/bench/smoke --recipe-args --preset smoke
    .venv/bin/python benchmarks/scale.py --report /tmp/bench/*.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import proctree  # noqa: E402

PIPELINES = {"dpo": REPO / "pipelines" / "dpo_100k.py", "curation": REPO / "pipelines" / "magpie_instructions.py"}
# The recipe's graph at full size with the stand-in at every model boundary
# (magpie_dl/backends/standin.py), writing in SmolLM2's real tokenizer (49,152 tokens).
DEFAULT_ARGS = ["--preset", "scale"]


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (blocks, as ``du``), 0 when absent."""
    total = 0
    try:
        if not path.is_dir():
            return path.stat().st_blocks * 512
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += disk_bytes(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:  # removed while we looked
            continue
    return total


def store_progress(out: Path) -> dict[str, int]:
    """Rows each step has counted so far, read from the run's result store."""
    path = out / "cache" / "results.sqlite"
    if not path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return dict(db.execute("SELECT step, rows FROM progress"))
        finally:
            db.close()
    except sqlite3.Error:  # the table is not there yet, or the file is locked a moment
        return {}


class Sampler(proctree.Periodic):
    """Samples a running recipe's process tree, its output directory and its progress every ``every`` s."""

    def __init__(self, root: int, out: Path, every: float = 1.0, min_available_mib: float | None = None) -> None:
        super().__init__(every, at_start=True)
        self.root, self.out = root, out
        self.min_available_mib = min_available_mib
        self.low_memory_at: float | None = None  # when the run was stopped for the machine's memory
        self.started = time.perf_counter()
        self.samples: list[dict[str, Any]] = []
        self.release_seen: float | None = None
        self._cpu_last: dict[int, float] = {}  # CPU seconds per process at its last sample

    def sample(self) -> None:
        t = time.perf_counter() - self.started
        pids = proctree.tree(self.root)
        pss, anon, rss = proctree.memory_mib(pids)
        # Which process holds the memory: the driver (distilabel's batch manager, the global
        # steps' buffers) or the largest step worker.
        driver_anon = proctree.anon_pss_kib(self.root)[1] / 1024
        worker_anon = max((proctree.anon_pss_kib(p)[1] for p in pids if p != self.root), default=0) / 1024
        available = proctree.available_mib()
        if self.min_available_mib and available < self.min_available_mib and self.low_memory_at is None:
            self.low_memory_at = t  # the run is stopped before it takes the shared machine down
            os.killpg(self.root, signal.SIGKILL)
        for pid in pids:
            if (cpu := proctree.cpu_seconds(pid)) is not None:
                self._cpu_last[pid] = cpu
        if self.release_seen is None and any(p.name.startswith(".release-") for p in _entries(self.out)):
            self.release_seen = t
        cache = self.out / "cache"
        self.samples.append({
            "t": round(t, 2), "procs": len(pids),
            "pss_mib": round(pss, 1), "pss_anon_mib": round(anon, 1), "max_rss_mib": round(rss, 1),
            "driver_anon_mib": round(driver_anon, 1), "max_worker_anon_mib": round(worker_anon, 1),
            "available_mib": round(available),
            "driver_cpu_s": round(self._cpu_last.get(self.root, 0.0), 2),
            "tree_cpu_s": round(sum(self._cpu_last.values()), 2),
            "disk_out_b": disk_bytes(self.out), "disk_cache_b": disk_bytes(cache),
            "disk_distilabel_b": disk_bytes(cache / "distilabel"),
            "disk_store_b": sum(disk_bytes(p) for p in cache.glob("results.sqlite*")),
            "progress": store_progress(self.out),
        })


def _entries(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def recipe_command(recipe: str, n: int, out: Path, extra: list[str]) -> list[str]:
    """The recipe's own command line for ``n`` instructions (DPO) or queries (curation)."""
    return [sys.executable, str(PIPELINES[recipe]), *extra,
            "--generator.num_instructions", str(n), "--output-dir", str(out)]


def run_measured(cmd: list[str], out: Path, log: Path, every: float = 1.0,
                 kill_after: float | None = None, kill_at_release: float | None = None,
                 env: dict[str, str] | None = None, min_available_mib: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` in its own process group, sampled; returns the samples and a summary.

    ``kill_after`` sends SIGKILL to the whole group that many seconds in, ``kill_at_release``
    that many seconds after the release staging appears (kill-and-resume);
    ``min_available_mib`` when the machine's available memory falls under it.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO, start_new_session=True)
        killed = False
        with Sampler(proc.pid, out, every, min_available_mib) as sampler:
            try:
                if kill_at_release is None:
                    proc.wait(timeout=kill_after)
                else:
                    while proc.poll() is None and sampler.release_seen is None:
                        time.sleep(0.2)
                    proc.wait(timeout=kill_at_release)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
            # Leftover workers would keep sampling alive; the group dies with the run.
            _reap_group(proc.pid)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    samples = sampler.samples
    summary = {
        "command": " ".join(cmd), "returncode": proc.returncode,
        "killed": killed or sampler.low_memory_at is not None,
        "wall_s": round(wall, 1),
        "tree_cpu_rusage_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "tree_cpu_sampled_s": samples[-1]["tree_cpu_s"] if samples else None,
        "driver_cpu_s": samples[-1]["driver_cpu_s"] if samples else None,
        "peak_pss_mib": max((s["pss_mib"] for s in samples), default=0),
        "peak_pss_anon_mib": max((s["pss_anon_mib"] for s in samples), default=0),
        "peak_driver_anon_mib": max((s.get("driver_anon_mib", 0) for s in samples), default=0),
        "peak_worker_anon_mib": max((s.get("max_worker_anon_mib", 0) for s in samples), default=0),
        "low_memory_stop_s": sampler.low_memory_at,
        "peak_disk_out_b": max((s["disk_out_b"] for s in samples), default=0),
        "peak_disk_cache_b": max((s["disk_cache_b"] for s in samples), default=0),
        "peak_disk_distilabel_b": max((s["disk_distilabel_b"] for s in samples), default=0),
        "peak_disk_store_b": max((s["disk_store_b"] for s in samples), default=0),
        "final_disk_out_b": disk_bytes(out),
        "release_seen_s": sampler.release_seen,
        "load_average_start": os.getloadavg()[0],
    }
    summary.update(phases(samples, sampler.release_seen, wall))
    summary["row_cost"] = row_cost(samples)
    return {"summary": summary, "samples": samples}


def _reap_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def phases(samples: list[dict[str, Any]], release_seen: float | None, wall: float) -> dict[str, Any]:
    """Seconds in each phase: steps (until the last progress change), teardown (until the
    release staging appears), export (release staging to the end)."""
    last_change, previous = None, None
    for s in samples:
        if s["progress"] and s["progress"] != previous:
            last_change, previous = s["t"], s["progress"]
    out: dict[str, Any] = {"steps_done_s": last_change}
    if release_seen is not None:
        out["export_s"] = round(wall - release_seen, 1)
        if last_change is not None:
            out["teardown_s"] = round(release_seen - last_change, 1)
    return out


def row_cost(samples: list[dict[str, Any]], parts: int = 5) -> dict[str, dict[str, list[float]]]:
    """Per step, seconds per 1K of its rows in each fifth of them: wall seconds, and CPU
    seconds of the whole tree over the same stretch (steady on a shared machine). Flat
    means no per-row cost that grows with the row index. Steps overlap and a step upstream
    of the slowest one waits on it, so read the slowest (last) step's figures."""
    steps = {name for s in samples for name in s["progress"]}
    result: dict[str, dict[str, list[float]]] = {}
    for step in sorted(steps):
        points = [(s["t"], s["tree_cpu_s"], s["progress"][step]) for s in samples if step in s["progress"]]
        total = points[-1][2]
        if total < parts * 10:
            continue
        wall, cpu = [], []
        for k in range(parts):
            lo, hi = total * k / parts, total * (k + 1) / parts
            t_lo, c_lo = next((t, c) for t, c, rows in points if rows >= lo)
            t_hi, c_hi = next((t, c) for t, c, rows in points if rows >= hi)
            wall.append(round((t_hi - t_lo) / ((hi - lo) / 1000), 2))
            cpu.append(round((c_hi - c_lo) / ((hi - lo) / 1000), 2))
        result[step] = {"wall": wall, "cpu": cpu}
    return result


def mib(b: int | None) -> str:
    return "" if b is None else f"{b / 2**20:,.0f}"


def report(paths: list[Path]) -> None:
    """The Markdown tables of BENCHMARKS.md, one row per result file."""
    print("| run | rows | exit | wall s | steps done s | teardown s | export s | tree CPU s | CPU ms / row "
          "| driver CPU s | peak PSS MiB | peak anon PSS MiB | peak disk DIR MiB | peak store MiB "
          "| peak distilabel cache MiB | final DIR MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    loaded = [(p, json.loads(p.read_text())) for p in paths]
    for path, data in loaded:
        s, n = data["summary"], data.get("rows", 0)
        if s["returncode"] != 0 and data["samples"]:  # stopped part-way: the rows its slowest step finished
            n = min(data["samples"][-1]["progress"].values(), default=0)
        # A killed run's workers were never waited for: only the samples saw their CPU.
        cpu = s["tree_cpu_rusage_s"] if s["returncode"] == 0 else s["tree_cpu_sampled_s"]
        print(f"| {path.stem} | {n:,} | {s['returncode']} | {s['wall_s']} | {s.get('steps_done_s')} | {s.get('teardown_s')} "
              f"| {s.get('export_s')} | {cpu} | {1000 * cpu / max(n, 1):.2f} "
              f"| {s['driver_cpu_s']} | {s['peak_pss_mib']:,.0f} | {s['peak_pss_anon_mib']:,.0f} | {mib(s['peak_disk_out_b'])} "
              f"| {mib(s['peak_disk_store_b'])} | {mib(s['peak_disk_distilabel_b'])} | {mib(s['final_disk_out_b'])} |")
    print()
    print("Seconds per 1K rows in each fifth of a step's rows, wall (tree CPU):")
    print()
    for path, data in loaded:
        for step, costs in row_cost(data["samples"]).items():
            print(f"- {path.stem} `{step}`: " + " / ".join(f"{w:.1f} ({c:.1f})" for w, c in zip(costs["wall"], costs["cpu"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", choices=sorted(PIPELINES))
    parser.add_argument("rows", nargs="?", type=int, help="Instructions (dpo) or queries (curation).")
    parser.add_argument("--out", type=Path, help="The run's output directory (removed first); results go to OUT.json.")
    parser.add_argument("--every", type=float, default=1.0, help="Seconds between samples.")
    parser.add_argument("--keep", action="store_true", help="Keep the output directory (default: removed after).")
    parser.add_argument("--min-available-mib", type=float, default=1500,
                        help="SIGKILL the run when the machine's available memory falls under this (0: never).")
    parser.add_argument("--report", type=Path, nargs="+", help="Print the Markdown tables of these result files.")
    parser.add_argument("--recipe-args", nargs=argparse.REMAINDER, default=DEFAULT_ARGS,
                        help=f"Flags for the recipe's command (default: {' '.join(DEFAULT_ARGS)}).")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    if not (args.recipe and args.rows and args.out):
        parser.error("give RECIPE ROWS --out DIR, or --report FILES")
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = recipe_command(args.recipe, args.rows, args.out, args.recipe_args)
    result = run_measured(cmd, args.out, args.out.with_suffix(".log"), args.every,
                          min_available_mib=args.min_available_mib or None)
    result["rows"], result["recipe"] = args.rows, args.recipe
    args.out.with_suffix(".json").write_text(json.dumps(result))
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
