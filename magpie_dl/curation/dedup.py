"""Near-duplicate detection over normalised sentence embeddings.

Recipe (Magpie, FIELD_NOTES §1): instructions are embedded, vectors are L2-normalised,
and two instructions are near-duplicates when their squared L2 distance is below
``threshold`` (0.05, about cosine 0.975). Every row gets the released columns:

- ``min_neighbor_distance``: squared L2 distance to the nearest *other* row
  (``None`` when the set has a single row);
- ``repeat_count``: how many other rows lie within the threshold (at most ``k`` found per
  row by the search, then made symmetric: if either row found the other, both count it);
- ``min_similar_uuid``: ``None`` when the row has no near-duplicate, else the uuid of the
  surviving row that represents it (its own uuid when it survives itself). Downstream
  filters keep a row iff ``min_similar_uuid in (None, uuid)``, the convention of the
  released data.

Which copy survives does not depend on input order. The reference keeps "the earliest
copy" by position, so shuffling the input changes the output, and it drops a row whose
only similar row was itself dropped. Here rows are first put in canonical order (sorted
by uuid) and survivors are chosen greedily in that order: a row survives unless a
smaller-uuid row within the threshold already survived. That guarantees every dropped
row has a survivor within the threshold and no two survivors are within it (for the
neighbour pairs the search found), and it is a function of the *set* of (uuid, vector)
pairs only. Running the search itself in canonical order also makes the ANN index
(training sample, list layout) independent of input order.

Search: exact blocked matrix products with numpy for small sets; above
``index_min_rows`` an IVF index (FAISS k-means cells, scanned cell by cell with matrix
products), which trades a measured sliver of recall (BENCHMARKS.md) for running 1M rows
in minutes on two cores instead of hours.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SearchMethod = Literal["auto", "exact", "index"]


class DedupConfig(BaseModel):
    """Knobs of the near-duplicate search.

    Attributes:
        threshold: squared L2 distance between unit vectors below which two rows are
            near-duplicates (reference: 0.05).
        k: neighbours examined per row (reference: 500). Caps ``repeat_count`` per
            search direction and bounds memory.
        method: ``exact``, ``index`` (FAISS IVF), or ``auto`` (index from
            ``index_min_rows`` rows up).
        index_min_rows: size from which ``auto`` uses the index (exact search costs
            O(n^2): 100K x 768 took 86 s here, the index 11 s; see BENCHMARKS.md).
        nlist: IVF cells; default ``sqrt(nprobe * n)``, which balances the two search
            costs (``nlist`` centroid distances vs ``nprobe * n / nlist`` row distances).
        nprobe: IVF cells visited per query; more = better recall, slower.
        train_size: vectors used to train the IVF quantiser; default ``25 * nlist``.
        train_iterations: k-means iterations of the quantiser.
        block_size: exact search: query rows per block; default keeps a block near 256 MiB.
        seed: seed of the training sample and of k-means.
        num_threads: OpenMP threads for FAISS (None: FAISS's default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.05, gt=0.0, description="Squared L2 near-duplicate threshold.")
    k: int = Field(500, ge=1, description="Neighbours searched per row.")
    method: SearchMethod = Field("auto", description="Exact search, FAISS index, or auto.")
    index_min_rows: int = Field(50_000, ge=1, description="Rows from which auto uses the index.")
    nlist: int | None = None
    nprobe: int = Field(8, ge=1, description="IVF cells visited per query.")
    train_size: int | None = None
    train_iterations: int = 10
    block_size: int | None = None
    seed: int = 0
    num_threads: int | None = None

    def resolve_method(self, n: int) -> Literal["exact", "index"]:
        if self.method == "auto":
            return "index" if n >= self.index_min_rows else "exact"
        return self.method


@dataclass
class NeighborGraph:
    """What a search found, in the row order it was given.

    ``min_distance[i]`` is the distance to the nearest other row found (``inf`` if none);
    ``(src, dst, dist)`` lists, per row, the other rows within the threshold (at most
    ``k`` per row, nearest first). Not yet symmetric.
    """

    min_distance: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    dist: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class DedupResult:
    """Per-row near-duplicate columns, in the caller's input order."""

    min_neighbor_distance: list[float | None]
    repeat_count: np.ndarray
    min_similar_uuid: list[str | None]
    keep: np.ndarray
    method: str
    stats: dict[str, Any] = field(default_factory=dict)

    def row(self, i: int) -> dict[str, Any]:
        """The three released columns for row ``i``."""
        return {
            "min_neighbor_distance": self.min_neighbor_distance[i],
            "repeat_count": int(self.repeat_count[i]),
            "min_similar_uuid": self.min_similar_uuid[i],
        }


def normalize_rows(x: np.ndarray, copy: bool = True) -> np.ndarray:
    """Float32 ``x`` with unit-L2 rows (zero rows stay zero); in place when ``copy=False``
    and ``x`` is already float32."""
    x = np.array(x, dtype=np.float32, copy=copy) if copy else np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    # einsum avoids materialising x * x (another n x dim array) to get the norms.
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.maximum(norms, 1e-12)[:, None]
    return x


def _default_block_size(n: int) -> int:
    # One (block, n) float32 distance matrix of ~256 MiB: large enough for BLAS to be
    # efficient, small enough to leave memory for the rest of the pipeline.
    return int(max(16, min(8192, (1 << 26) // max(n, 1))))


def exact_neighbors(x: np.ndarray, config: DedupConfig) -> NeighborGraph:
    """All pairs within the threshold by blocked ``x @ x.T`` (``x`` has unit rows).

    For unit vectors ``|a - b|^2 = 2 - 2 a.b``, so one matrix product gives a block
    of distances. Only pairs below the threshold are kept, so memory stays O(n + pairs).
    """
    n = len(x)
    block = config.block_size or _default_block_size(n)
    # Work in similarity space (s > 1 - threshold / 2 <=> d < threshold): it saves two
    # passes over every block, which dominate at small dimensions.
    s_min = 1.0 - config.threshold / 2.0
    min_d = np.full(n, np.inf, dtype=np.float32)
    src, dst, dist = [], [], []
    # Reused buffers: fresh (block, n) allocations cost page faults on every block.
    sim_buf = np.empty((block, n), dtype=np.float32)
    hit_buf = np.empty((block, n), dtype=bool)
    for start in range(0, n, block):
        stop = min(start + block, n)
        b = stop - start
        qids = np.arange(start, stop)
        s = np.matmul(x[start:stop], x.T, out=sim_buf[:b])
        s[np.arange(b), qids] = -np.inf  # never your own neighbour
        if n > 1:
            min_d[start:stop] = np.maximum(2.0 - 2.0 * s.max(axis=1), 0.0)
        hits = np.greater(s, s_min, out=hit_buf[:b])
        rows = np.nonzero(hits.any(axis=1))[0]  # few rows have near-duplicates
        r, c = np.nonzero(hits[rows])
        r = rows[r]
        if len(r):
            # Rounding can give tiny negatives for identical rows.
            dv = np.maximum(2.0 - 2.0 * s[r, c], 0.0).astype(np.float32)
            # Rows with more than k near-duplicates keep their k nearest, as the index does.
            if np.bincount(r).max() > config.k:
                r, c, dv = _cap_per_row(r, c, dv, config.k)
            src.append(qids[r])
            dst.append(c.astype(np.int64))
            dist.append(dv)
    return _graph(min_d, src, dst, dist)


def _cap_per_row(
    r: np.ndarray, c: np.ndarray, dv: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep each row's ``k`` nearest pairs (ties broken by neighbour id)."""
    order = np.lexsort((c, dv, r))
    r, c, dv = r[order], c[order], dv[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    keep = rank < k
    return r[keep], c[keep], dv[keep]


def index_neighbors(x: np.ndarray, config: DedupConfig) -> NeighborGraph:
    """Approximate neighbours with an inverted-file (IVF) index, scanned list by list.

    FAISS k-means (on a seeded sample) places ``nlist`` centroids; every row lives in
    the cell of its nearest centroid and is compared with the rows of its ``nprobe``
    nearest cells. Because the queries are the indexed rows themselves, the search is
    done cell-major: for each cell, all rows that probe it are compared with all rows
    it holds in one matrix product. That is the same candidate set as FAISS's
    ``IndexIVFFlat.search`` with this ``nprobe``, but computed with BLAS instead of
    one query at a time; on 1M x 768 rows FAISS's per-query scan was memory-bound
    (each query re-reads its cells) and several times slower (BENCHMARKS.md).

    Candidate distances are exact, so pairs can be missed, never invented, and
    ``min_distance`` can only be over-estimated.
    """
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("index search needs faiss-cpu: pip install -e '.[curation]'") from exc

    n, dim = x.shape
    if config.num_threads:
        faiss.omp_set_num_threads(config.num_threads)
    nlist = config.nlist or int(max(1, min(math.sqrt(config.nprobe * n), n // 25 or 1)))
    nprobe = min(config.nprobe, nlist)
    train_size = min(n, config.train_size or 25 * nlist)
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(n, size=train_size, replace=False))

    t0 = time.perf_counter()
    kmeans = faiss.Kmeans(
        dim, nlist, niter=config.train_iterations, seed=config.seed,
        max_points_per_centroid=max(1, -(-train_size // nlist)),  # use the whole sample
    )
    kmeans.train(np.ascontiguousarray(x[sample]))
    t1 = time.perf_counter()
    # Each row's nprobe nearest cells, nearest first: cells[:, 0] is where it lives.
    cells = np.empty((n, nprobe), dtype=np.int64)
    for start in range(0, n, 65536):
        _, cells[start : start + 65536] = kmeans.index.search(x[start : start + 65536], nprobe)
    t2 = time.perf_counter()

    home = cells[:, 0]
    members = np.argsort(home, kind="stable")
    member_bounds = np.searchsorted(home[members], np.arange(nlist + 1))
    slot = np.empty(n, dtype=np.int64)  # a row's position inside its own cell
    slot[members] = np.arange(n) - member_bounds[home[members]]
    probe_cells = cells.ravel()
    probers = np.argsort(probe_cells, kind="stable")
    probe_bounds = np.searchsorted(probe_cells[probers], np.arange(nlist + 1))
    probers //= nprobe  # flat position -> row id

    s_min = 1.0 - config.threshold / 2.0
    best = np.full(n, -np.inf, dtype=np.float32)  # best similarity to another row
    src, dst, sims = [], [], []
    for c in range(nlist):
        held = members[member_bounds[c] : member_bounds[c + 1]]
        asking = probers[probe_bounds[c] : probe_bounds[c + 1]]
        if not len(held) or not len(asking):
            continue
        xc = x[held]
        # Chunks of queries keep one block near 64 MiB even for oversized cells.
        step = max(1, (1 << 24) // len(held))
        for start in range(0, len(asking), step):
            q = asking[start : start + step]
            s = x[q] @ xc.T
            own = np.nonzero(home[q] == c)[0]
            s[own, slot[q[own]]] = -np.inf  # never your own neighbour
            # A row probes each cell once, so q has no repeats: plain fancy indexing is safe.
            best[q] = np.maximum(best[q], s.max(axis=1))
            r, col = np.nonzero(s > s_min)
            if len(r):
                src.append(q[r])
                dst.append(held[col])
                sims.append(s[r, col])
    t3 = time.perf_counter()

    min_d = np.maximum(2.0 - 2.0 * best, 0.0).astype(np.float32)  # -inf similarity -> inf
    if src:
        s_all, t_all = np.concatenate(src), np.concatenate(dst)
        d_all = np.maximum(2.0 - 2.0 * np.concatenate(sims), 0.0).astype(np.float32)
        order = np.argsort(s_all, kind="stable")
        s_all, t_all, d_all = s_all[order], t_all[order], d_all[order]
        if np.bincount(s_all).max() > config.k:  # same cap as the exact search
            s_all, t_all, d_all = _cap_per_row(s_all, t_all, d_all, config.k)
        src, dst, dist = [s_all], [t_all], [d_all]
    else:
        dist = []
    graph = _graph(min_d, src, dst, dist)
    graph.timings = {
        "nlist": nlist,
        "nprobe": nprobe,
        "train_rows": train_size,
        "train_s": round(t1 - t0, 2),
        "assign_s": round(t2 - t1, 2),
        "scan_s": round(t3 - t2, 2),
    }
    return graph


def _graph(
    min_d: np.ndarray, src: list[np.ndarray], dst: list[np.ndarray], dist: list[np.ndarray]
) -> NeighborGraph:
    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return NeighborGraph(
        min_distance=min_d,
        src=cat(src, np.int64),
        dst=cat(dst, np.int64),
        dist=cat(dist, np.float32),
    )


def _symmetric_csr(
    n: int, graph: NeighborGraph
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of found pairs in both directions, as CSR (indptr, neighbour ids, distances).

    A row found by another counts as that row's neighbour too, so an ANN miss in one
    direction does not make the pair's outcome depend on which row was the query.
    """
    s = np.concatenate([graph.src, graph.dst])
    t = np.concatenate([graph.dst, graph.src])
    dv = np.concatenate([graph.dist, graph.dist])
    key = s * n + t
    key, first = np.unique(key, return_index=True)
    s, t, dv = s[first], t[first], dv[first]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(s, minlength=n), out=indptr[1:])
    return indptr, t, dv


def greedy_survivors(indptr: np.ndarray, nbrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Choose survivors in canonical order; return (keep mask, representative index).

    Row ``i`` survives unless a smaller-index neighbour survived. A survivor represents
    itself; a dropped row is represented by its smallest-index surviving neighbour.
    Rows are already in canonical (uuid) order, so "smaller index" = "smaller uuid".
    """
    n = len(indptr) - 1
    keep = np.ones(n, dtype=bool)
    rep = np.arange(n)
    src = np.repeat(np.arange(n), np.diff(indptr))
    # Only rows with a smaller neighbour can be dropped; the loop visits just those.
    candidates = np.unique(src[nbrs < src])
    for i in candidates:
        nb = nbrs[indptr[i] : indptr[i + 1]]
        alive = nb[(nb < i) & keep[nb]]
        if len(alive):
            keep[i] = False
            rep[i] = alive.min()
    return keep, rep


def find_near_duplicates(
    embeddings: np.ndarray, uuids: Sequence[str], config: DedupConfig | None = None
) -> DedupResult:
    """Tag every row with the near-duplicate columns; see the module docstring.

    Args:
        embeddings: ``(n, dim)`` vectors (normalised here).
        uuids: unique row ids; they define the canonical order.
        config: search settings.

    Returns:
        Columns in the input order, the survivor mask and timing stats.
    """
    config = config or DedupConfig()
    n = len(uuids)
    if len(embeddings) != n:
        raise ValueError(f"{len(embeddings)} embeddings for {n} uuids")
    uuid_arr = np.asarray([str(u) for u in uuids], dtype=object)
    if n == 0:
        return DedupResult([], np.zeros(0, np.int64), [], np.zeros(0, bool), "none")
    order = np.argsort(uuid_arr, kind="stable")
    sorted_uuids = uuid_arr[order]
    dup = np.nonzero(sorted_uuids[1:] == sorted_uuids[:-1])[0]
    if len(dup):
        raise ValueError(f"uuids must be unique; {sorted_uuids[dup[0]]!r} repeats")

    t0 = time.perf_counter()
    # One canonical-order copy, normalised in place: at 1M x 768 each copy is 3 GB.
    x = normalize_rows(np.asarray(embeddings)[order], copy=False)
    method = config.resolve_method(n)
    graph = exact_neighbors(x, config) if method == "exact" else index_neighbors(x, config)
    t_search = time.perf_counter() - t0

    indptr, nbrs, ndist = _symmetric_csr(n, graph)
    keep_c, rep_c = greedy_survivors(indptr, nbrs)
    degree_c = np.diff(indptr)
    min_c = graph.min_distance.copy()
    if len(nbrs):  # a pair found only from the other side may be closer than our own best
        np.minimum.at(min_c, np.repeat(np.arange(n), degree_c), ndist)

    # Back to input order.
    keep = np.empty(n, dtype=bool)
    keep[order] = keep_c
    repeat = np.empty(n, dtype=np.int64)
    repeat[order] = degree_c
    min_dist: list[float | None] = [None] * n
    sim_uuid: list[str | None] = [None] * n
    for c, i in enumerate(order):
        if np.isfinite(min_c[c]):
            min_dist[i] = float(min_c[c])
        if degree_c[c]:
            sim_uuid[i] = str(sorted_uuids[rep_c[c]])
    stats = {
        "rows": n,
        "method": method,
        "search_seconds": round(t_search, 3),
        **graph.timings,
        "total_seconds": round(time.perf_counter() - t0, 3),
        "pairs_within_threshold": int(len(nbrs) // 2),
        "rows_with_duplicates": int((degree_c > 0).sum()),
        "dropped": int((~keep).sum()),
    }
    return DedupResult(min_dist, repeat, sim_uuid, keep, method, stats)
