"""Near-duplicate detection: real MiniLM embeddings, order independence, exact vs index."""

from __future__ import annotations

import numpy as np
import pytest

from magpie_dl.curation.dedup import DedupConfig, DedupResult, find_near_duplicates, normalize_rows

# Pairs measured with all-MiniLM-L6-v2 (squared L2 of unit vectors): the groups below
# are within the 0.05 threshold; the "near misses" are real paraphrases just outside it.
TEXTS = [
    "How do I sort a list in Python?",  # 0  group sort
    "How can I sort a list in Python?",  # 1  group sort (0.0055 from 0)
    "How do I sort a list in Python",  # 2  group sort
    "What is the capital of France?",  # 3  group france
    "What's the capital of France?",  # 4  group france (0.013)
    "What is the capital city of France?",  # 5  near miss (0.076 from 3)
    "Write a short poem about the ocean.",  # 6  group poem
    "Write a short poem about the sea.",  # 7  near miss (0.128 from 6)
    "Write a brief poem about the ocean.",  # 8  group poem (0.039)
    "Give me tips for improving my sleep.",  # 9  group sleep
    "Give me some tips to improve my sleep.",  # 10 group sleep (0.030)
    "How do I reverse a string in JavaScript?",  # 11
    "How do I reverse a string in Java?",  # 12
    "Explain how photosynthesis works.",  # 13
    "Explain how photosynthesis works in plants.",  # 14 near miss (0.104)
    "Plan a three-day trip to Rome.",  # 15
    "Solve 3x + 5 = 20 for x.",  # 16
    "Describe the water cycle.",  # 17
]
GROUPS = [{0, 1, 2}, {3, 4}, {6, 8}, {9, 10}]


@pytest.fixture(scope="module")
def minilm_vectors() -> np.ndarray:
    from magpie_dl.curation.embeddings import SentenceEmbedder

    return SentenceEmbedder().encode(TEXTS)


@pytest.fixture(scope="module")
def uuids() -> list[str]:
    # Random, so the survivor (smallest uuid) is not simply the first text of a group.
    rng = np.random.default_rng(11)
    return [f"{v:016x}" for v in rng.integers(0, 2**62, len(TEXTS))]


def by_uuid(result: DedupResult, ids: list[str]) -> dict[str, tuple]:
    return {
        u: (bool(result.keep[i]), int(result.repeat_count[i]), result.min_similar_uuid[i])
        for i, u in enumerate(ids)
    }


def distances(result: DedupResult, ids: list[str]) -> np.ndarray:
    order = np.argsort(ids)
    return np.array(result.min_neighbor_distance, dtype=float)[order]


def test_paraphrases_are_detected_and_smallest_uuid_survives(minilm_vectors, uuids) -> None:
    res = find_near_duplicates(minilm_vectors, uuids, DedupConfig(method="exact"))
    in_group = {i: g for g in GROUPS for i in g}
    for i, uuid in enumerate(uuids):
        group = in_group.get(i)
        if group is None:
            assert res.repeat_count[i] == 0, TEXTS[i]
            assert res.min_similar_uuid[i] is None and res.keep[i]
            assert res.min_neighbor_distance[i] >= 0.05
        else:
            winner = min(uuids[j] for j in group)
            assert res.repeat_count[i] == len(group) - 1, TEXTS[i]
            assert res.min_similar_uuid[i] == winner
            assert res.keep[i] == (uuid == winner)
            assert res.min_neighbor_distance[i] < 0.05
    assert res.stats["dropped"] == sum(len(g) - 1 for g in GROUPS)


def test_survivors_do_not_depend_on_input_order(minilm_vectors, uuids) -> None:
    first = find_near_duplicates(minilm_vectors, uuids)
    reference = by_uuid(first, uuids)
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(len(uuids))
        ids = [uuids[i] for i in perm]
        for method in ("exact", "index"):
            res = find_near_duplicates(minilm_vectors[perm], ids, DedupConfig(method=method, nlist=2))
            assert by_uuid(res, ids) == reference, method
            # Exact and FAISS arithmetic differ in the last float32 digits.
            np.testing.assert_allclose(distances(res, ids), distances(first, uuids), atol=1e-5)


def test_threshold_is_configurable(minilm_vectors, uuids) -> None:
    res = find_near_duplicates(minilm_vectors, uuids, DedupConfig(threshold=0.09))
    assert res.repeat_count[5] == 2  # "capital city" (0.076, 0.089) now joins the France group
    assert res.repeat_count[7] == 0  # 0.128 stays out


def test_chains_keep_a_row_whose_only_neighbour_was_dropped() -> None:
    # a ~ b and b ~ c but a !~ c: the reference drops both b and c; one survivor per
    # drop is enough, so c (whose only near-duplicate b is gone) must stay.
    angle = np.arccos(1 - 0.03 / 2)  # squared L2 0.03 between neighbours, ~0.12 for a-c
    vecs = np.array([[np.cos(k * angle), np.sin(k * angle), 0.0] for k in range(3)])
    res = find_near_duplicates(vecs, ["a", "b", "c"], DedupConfig(method="exact"))
    assert res.keep.tolist() == [True, False, True]
    assert res.min_similar_uuid == ["a", "a", "c"]
    assert res.repeat_count.tolist() == [1, 2, 1]


def test_exact_copies_collapse_to_one_even_with_small_k() -> None:
    vecs = np.tile([[1.0, 2.0, 3.0]], (10, 1))
    ids = [f"id{i}" for i in range(10)]
    res = find_near_duplicates(vecs, ids, DedupConfig(k=3, method="exact"))
    assert res.keep.sum() == 1 and res.keep[0]
    assert set(res.min_similar_uuid) == {"id0"}
    assert all(d < 1e-6 for d in res.min_neighbor_distance)  # float32 rounding, not exactly 0


def test_edge_cases() -> None:
    one = find_near_duplicates(np.ones((1, 4)), ["only"])
    assert one.row(0) == {"min_neighbor_distance": None, "repeat_count": 0, "min_similar_uuid": None}
    assert find_near_duplicates(np.zeros((0, 4)), []).keep.shape == (0,)
    with pytest.raises(ValueError, match="unique"):
        find_near_duplicates(np.eye(3), ["a", "b", "a"])
    with pytest.raises(ValueError):
        DedupConfig(threshold=0)


def clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Clustered vectors with 3% planted near-copies (inside the threshold)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 40, dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim))
    x = normalize_rows(x)
    m = int(0.03 * n)
    rows = rng.choice(n, 2 * m, replace=False)
    x[rows[:m]] = x[rows[m:]] + rng.standard_normal((m, dim)).astype(np.float32) * np.sqrt(0.02 / dim)
    return x, [f"{v:016x}" for v in rng.integers(0, 2**62, n)]


def test_index_agrees_with_exact_search() -> None:
    x, ids = clustered(6000, 48, seed=1)
    exact = find_near_duplicates(x, ids, DedupConfig(method="exact"))
    index = find_near_duplicates(x, ids, DedupConfig(method="index", nprobe=4))
    assert index.method == "index" and exact.method == "exact"
    assert exact.stats["rows_with_duplicates"] >= 300
    assert np.mean(index.keep == exact.keep) >= 0.999
    assert np.mean(index.repeat_count == exact.repeat_count) >= 0.999
    # The index computes exact distances for what it visits: it may miss, never invent.
    assert np.all(index.repeat_count <= exact.repeat_count)
    ed = np.array(exact.min_neighbor_distance)
    idd = np.array(index.min_neighbor_distance)
    assert np.all(idd >= ed - 1e-5)
    assert np.mean(np.abs(idd - ed) < 1e-5) >= 0.95


def test_auto_switches_to_the_index_at_the_configured_size() -> None:
    x, ids = clustered(800, 16, seed=2)
    assert find_near_duplicates(x, ids, DedupConfig(index_min_rows=1000)).method == "exact"
    assert find_near_duplicates(x, ids, DedupConfig(index_min_rows=800)).method == "index"


def test_embedder_matches_sentence_transformers(minilm_vectors) -> None:
    st = pytest.importorskip("sentence_transformers")
    from magpie_dl.curation.embeddings import resolve_model_path, PACKAGED_MINILM

    model = st.SentenceTransformer(resolve_model_path(PACKAGED_MINILM), device="cpu")
    expected = model.encode(TEXTS[:6], convert_to_numpy=True)
    assert minilm_vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(minilm_vectors[:6], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(minilm_vectors, axis=1), 1.0, atol=1e-5)
