"""Near-duplicate search at scale: wall time, peak memory, and index recall vs exact search.

Each measurement runs in its own subprocess so its peak RSS is its own. Synthetic
vectors stand in for sentence embeddings (768-d, as all-mpnet-base-v2): points drawn
around sub-topic centres, themselves drawn around topic centres (typical neighbour
distance far above the threshold), plus
planted near-duplicate groups whose members lie well inside the 0.05 threshold, so
there is something to find and cluster structure for the IVF quantiser to exploit.

Recall is measured on a sample of query rows (half from planted groups, half random):
their exact within-threshold neighbours are computed by brute force against all rows
and compared with what the index run reported (``repeat_count`` and nearest distance;
the index computes exact distances for the candidates it visits, so it can miss pairs
but never invent them).

    .venv/bin/python benchmarks/dedup.py --sizes 10000 100000 1000000 --methods exact index
    .venv/bin/python benchmarks/dedup.py --one 100000 index   # a single run, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 768
DUP_FRACTION = 0.02  # rows that are planted copies of another row


def synthetic(
    n: int, dim: int = DIM, seed: int = 0, dup_range: tuple[float, float] = (0.001, 0.03)
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Clustered unit-ish vectors with planted near-duplicates; returns (x, uuids, planted rows)."""
    rng = np.random.default_rng(seed)

    def around(centres: np.ndarray, count: int, spread: float) -> np.ndarray:
        # Points around randomly chosen centres; spread = expected squared offset norm.
        pts = rng.standard_normal((count, dim), dtype=np.float32)
        pts *= np.float32(np.sqrt(spread / dim))
        pts += centres[rng.integers(0, len(centres), count)]
        return pts

    # Two levels, like topics and sub-topics of real instructions: 256 topics, a
    # sub-topic per ~50 rows, rows around sub-topics. Same-sub-topic rows end up ~0.3
    # apart and unrelated rows ~2 apart (squared L2 after normalisation).
    topics = rng.standard_normal((256, dim), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    subtopics = around(topics, max(1, n // 50), 0.6)
    x = around(subtopics, n, 0.25)
    n_dup = int(n * DUP_FRACTION)
    rows = rng.choice(n, size=2 * n_dup, replace=False)
    copies, originals = rows[:n_dup], rows[n_dup:]
    # Perturbation of squared size in dup_range relative to a unit vector (0.05 = threshold).
    scale = np.sqrt(rng.uniform(*dup_range, n_dup) / dim).astype(np.float32)
    x[copies] = x[originals] / np.linalg.norm(x[originals], axis=1, keepdims=True)
    x[copies] += rng.standard_normal((n_dup, dim), dtype=np.float32) * scale[:, None]
    uuids = [f"{v:016x}" for v in rng.integers(0, 2**63, n)]
    return x, uuids, np.concatenate([copies, originals])


def exact_sample(x: np.ndarray, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Brute force for a few query rows: (count within threshold, nearest distance)."""
    xn = x  # already unit rows (run_one normalises in place: no second 3 GB copy)
    counts = np.zeros(len(queries), dtype=np.int64)
    nearest = np.zeros(len(queries), dtype=np.float64)
    for start in range(0, len(queries), 256):
        q = queries[start : start + 256]
        d = np.maximum(2.0 - 2.0 * (xn[q] @ xn.T), 0.0)
        d[np.arange(len(q)), q] = np.inf
        counts[start : start + len(q)] = (d < threshold).sum(axis=1)
        nearest[start : start + len(q)] = d.min(axis=1)
    return counts, nearest


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(
    n: int, method: str, sample: int, k: int, nprobe: int, seed: int, dup_range: tuple[float, float]
) -> dict:
    from magpie_dl.curation.dedup import DedupConfig, find_near_duplicates, normalize_rows

    t0 = time.perf_counter()
    x, uuids, planted = synthetic(n, seed=seed, dup_range=dup_range)
    normalize_rows(x, copy=False)
    gen_s = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = DedupConfig(method=method, k=k, nprobe=nprobe)  # type: ignore[arg-type]
    load_before = os.getloadavg()[0]
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    res = find_near_duplicates(x, uuids, cfg)
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "n": n,
        "dim": DIM,
        "method": method,
        "k": k,
        "nprobe": nprobe if method == "index" else None,
        "dup_range": list(dup_range),
        "wall_s": round(wall, 2),
        # CPU seconds of all threads: on a shared machine, cpu_s / cores is what the run
        # would take with the cores to itself.
        "cpu_s": round(cpu, 1),
        "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "peak_rss_mib": round(peak),
        "rss_before_mib": round(rss_before),
        "data_gen_s": round(gen_s, 1),
        "rows_with_duplicates": res.stats["rows_with_duplicates"],
        "dropped": res.stats["dropped"],
        **{key: res.stats[key] for key in ("nlist", "train_rows", "train_s", "assign_s", "scan_s") if key in res.stats},
    }
    if sample:
        rng = np.random.default_rng(seed + 1)
        half = sample // 2
        q = np.unique(
            np.concatenate(
                [rng.choice(planted, size=min(half, len(planted)), replace=False), rng.choice(n, size=half, replace=False)]
            )
        )
        t0 = time.perf_counter()
        counts, nearest = exact_sample(x, q, cfg.threshold)
        found = res.repeat_count[q]
        got_nearest = np.array([res.min_neighbor_distance[i] for i in q], dtype=np.float64)
        out.update(
            {
                "recall_sample_rows": int(len(q)),
                "recall_exact_pairs": int(counts.sum()),
                # found <= exact always (exact distances on visited candidates).
                "pair_recall": round(float(found.sum() / max(counts.sum(), 1)), 4),
                "rows_with_all_pairs": round(float(np.mean(found >= counts)), 4),
                "nearest_recall": round(float(np.mean(np.abs(got_nearest - nearest) <= 1e-4)), 4),
                "recall_check_s": round(time.perf_counter() - t0, 1),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--methods", nargs="+", default=["exact", "index"], choices=["exact", "index"])
    ap.add_argument("--max-exact", type=int, default=100_000, help="skip exact runs above this size")
    ap.add_argument("--sample", type=int, default=2000, help="query rows for the recall check (index runs)")
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dup-range", type=float, nargs=2, default=[0.001, 0.03], metavar=("LOW", "HIGH"),
                    help="squared distance of planted copies to their original (threshold 0.05)")
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    ap.add_argument("--one", nargs=2, metavar=("N", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        n, method = int(args.one[0]), args.one[1]
        sample = args.sample if method == "index" else 0
        print(json.dumps(run_one(n, method, sample, args.k, args.nprobe, args.seed, tuple(args.dup_range))))
        return

    for n in args.sizes:
        for method in args.methods:
            if method == "exact" and n > args.max_exact:
                continue
            cmd = [sys.executable, __file__, "--one", str(n), method, "--k", str(args.k),
                   "--nprobe", str(args.nprobe), "--sample", str(args.sample), "--seed", str(args.seed),
                   "--dup-range", *map(str, args.dup_range)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(proc.returncode)
            line = proc.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
