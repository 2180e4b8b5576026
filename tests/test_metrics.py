"""Retrieval metrics against hand computations and a naive reference; bootstrap behaviour; exact search ties."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from autoembed.task import metrics


def log2(x: float) -> float:
    return math.log(x, 2)


def naive(ranking: list[int], qrels: dict[int, float], k: int) -> dict[str, float]:
    """Textbook definitions, one query at a time (independent of the vectorized code)."""
    dcg = sum(qrels.get(d, 0) / log2(rank + 1) for rank, d in enumerate(ranking[:k], start=1))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    rr = next((1 / rank for rank, d in enumerate(ranking[:k], start=1) if qrels.get(d, 0) > 0), 0.0)
    n_rel = sum(1 for g in qrels.values() if g > 0)
    recall = sum(1 for d in ranking[:k] if qrels.get(d, 0) > 0) / n_rel
    return {"ndcg": dcg / idcg if idcg else 0.0, "mrr": rr, "recall": recall}


def scores(ranking: list[int], qrels: dict[int, float]) -> dict[str, float]:
    out = metrics.per_query_metrics(np.array([ranking]), [qrels])
    return {name: float(values[0]) for name, values in out.items()}


def test_multiple_relevant_documents_by_hand():
    # ranks: 1 -> doc 3 (no), 2 -> doc 1 (yes), 3 -> doc 7 (no), 4 -> doc 2 (yes); doc 9 is relevant
    # but never retrieved (e.g. absent from the corpus: negative index)
    s = scores([3, 1, 7, 2] + list(range(10, 16)), {1: 1, 2: 1, -1: 1})
    dcg = 1 / log2(3) + 1 / log2(5)  # 0.63093 + 0.43068
    idcg = 1 + 1 / log2(3) + 1 / log2(4)  # three relevant documents: 1 + 0.63093 + 0.5
    assert s["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
    assert s["ndcg@10"] == pytest.approx(1.06161 / 2.13093, abs=1e-5)  # = 0.49819
    assert s["mrr@10"] == pytest.approx(0.5)
    assert s["recall@10"] == pytest.approx(2 / 3)
    assert s["recall@100"] == pytest.approx(2 / 3)


def test_graded_relevance_by_hand():
    # doc 5 has grade 3, doc 4 grade 1; the model puts the lesser one first
    s = scores([4, 5, 0, 1, 2, 3, 6, 7, 8, 9], {5: 3, 4: 1})
    dcg = 1 / 1 + 3 / log2(3)
    idcg = 3 / 1 + 1 / log2(3)
    assert s["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
    assert s["ndcg@10"] == pytest.approx(0.79670, abs=1e-5)
    assert s["mrr@10"] == 1.0
    perfect = scores([5, 4, 0, 1, 2, 3, 6, 7, 8, 9], {5: 3, 4: 1})
    assert perfect["ndcg@10"] == pytest.approx(1.0)


def test_no_relevant_document_in_top_10():
    ranking = list(range(100, 110)) + [7] + list(range(200, 289))  # the relevant doc sits at rank 11
    s = scores(ranking, {7: 1})
    assert s["ndcg@10"] == 0.0
    assert s["mrr@10"] == 0.0
    assert s["recall@10"] == 0.0
    assert s["recall@100"] == 1.0


def test_fewer_documents_than_k():
    # a 3-document corpus: only 3 ranks exist; the missing ranks count as non-relevant
    s = scores([2, 0, 1], {0: 1})
    assert s["ndcg@10"] == pytest.approx(1 / log2(3))
    assert s["mrr@10"] == pytest.approx(0.5)
    assert s["recall@10"] == 1.0 and s["recall@100"] == 1.0


def test_padding_minus_one_is_never_relevant():
    s = scores([-1, -1, 0], {0: 1})
    assert s["mrr@10"] == pytest.approx(1 / 3)


def test_vectorized_matches_naive_on_random_rankings():
    rng = random.Random(0)
    rankings, qrels = [], []
    for _ in range(200):
        ranking = rng.sample(range(500), 100)
        rel = {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(range(500), rng.randint(1, 15))}
        rankings.append(ranking)
        qrels.append(rel)
    got = metrics.per_query_metrics(np.array(rankings), qrels)
    for i, (ranking, rel) in enumerate(zip(rankings, qrels)):
        want10, want100 = naive(ranking, rel, 10), naive(ranking, rel, 100)
        assert got["ndcg@10"][i] == pytest.approx(want10["ndcg"], abs=1e-12)
        assert got["mrr@10"][i] == pytest.approx(want10["mrr"], abs=1e-12)
        assert got["recall@10"][i] == pytest.approx(want10["recall"], abs=1e-12)
        assert got["recall@100"][i] == pytest.approx(want100["recall"], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------


def brute_force(q: np.ndarray, d: np.ndarray, k: int, ids: list[str]) -> list[list[int]]:
    """Rank by (-cosine in float32, document id): the order sentence-transformers uses."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    sims = torch.from_numpy(qn).float() @ torch.from_numpy(dn).float().T
    return [sorted(range(len(ids)), key=lambda j: (-float(row[j]), ids[j]))[:k] for row in sims]


def test_cosine_top_k_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 8)).astype(np.float32)
    docs = np.concatenate([base, base[:10], base[:10] * 2.0])  # exact duplicates and scaled copies: ties
    ids = [f"doc{rng.integers(1000):03d}-{i}" for i in range(len(docs))]
    queries = np.concatenate([rng.normal(size=(20, 8)).astype(np.float32), base[:5]])
    for k in (1, 3, 10, 100):
        _, idx = metrics.cosine_top_k(torch.from_numpy(queries), torch.from_numpy(docs), k, metrics.doc_id_ranks(ids))
        want = brute_force(queries, docs, k, ids)
        assert idx.tolist() == want, f"k={k}"


def test_cosine_top_k_boundary_tie_keeps_smallest_ids():
    # every document identical: the top 3 must be the 3 smallest ids, whatever topk picks
    docs = torch.ones(50, 4)
    ids = [f"{i:02d}" for i in range(50)][::-1]  # index 0 has the largest id
    _, idx = metrics.cosine_top_k(torch.ones(2, 4), docs, 3, metrics.doc_id_ranks(ids))
    assert idx.tolist() == [[49, 48, 47]] * 2


def test_cosine_top_k_chunks_give_the_same_result():
    rng = np.random.default_rng(1)
    q, d = torch.from_numpy(rng.normal(size=(37, 16))), torch.from_numpy(rng.normal(size=(300, 16)))
    a = metrics.cosine_top_k(q, d, 10)
    b = metrics.cosine_top_k(q, d, 10, max_scores=300 * 4)  # 4 queries per chunk
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0])


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_point_and_shrinks_with_more_queries():
    rng = np.random.default_rng(0)
    small = rng.beta(2, 2, size=100)
    large = rng.beta(2, 2, size=1600)
    out = metrics.bootstrap({"small": small, "large": large}, n_boot=1000, seed=0)
    for name, values in (("small", small), ("large", large)):
        lo, hi = out[name]["ci"]
        assert lo < values.mean() < hi
    width_small = out["small"]["ci"][1] - out["small"]["ci"][0]
    width_large = out["large"]["ci"][1] - out["large"]["ci"][0]
    assert width_large < width_small / 3  # sqrt(16) = 4 in theory
    # the bootstrap SE agrees with the analytic one
    assert out["small"]["se"] == pytest.approx(metrics.standard_error(small), rel=0.15)
    assert out["large"]["se"] == pytest.approx(metrics.standard_error(large), rel=0.15)


def test_bootstrap_mean_resamples_tasks_jointly():
    rng = np.random.default_rng(2)
    per_task = {"a": rng.random(400), "b": rng.random(400), "c": rng.random(400)}
    out = metrics.bootstrap(per_task, n_boot=2000, seed=0)
    point = np.mean([v.mean() for v in per_task.values()])
    lo, hi = out["mean"]["ci"]
    assert lo < point < hi
    # independent tasks: SE of the mean of 3 = sqrt(sum se_i^2) / 3
    expected = math.sqrt(sum(metrics.standard_error(v) ** 2 for v in per_task.values())) / 3
    assert out["mean"]["se"] == pytest.approx(expected, rel=0.15)
    assert out["mean"]["se"] < min(out[t]["se"] for t in per_task)


def test_bootstrap_is_seeded():
    values = {"a": np.linspace(0, 1, 50)}
    assert metrics.bootstrap(values, 200, seed=3) == metrics.bootstrap(values, 200, seed=3)
    assert metrics.bootstrap(values, 200, seed=3) != metrics.bootstrap(values, 200, seed=4)


def test_paired_bootstrap_sees_a_small_consistent_gain():
    rng = np.random.default_rng(0)
    a = {"t": rng.random(300)}
    b = {"t": a["t"] + 0.01}  # far below the unpaired CI width, but the same on every query
    out = metrics.paired_bootstrap(a, b, n_boot=500)
    assert out["diff"] == pytest.approx(0.01)
    assert out["ci"][0] > 0 and out["p_not_better"] == 0.0
    same = metrics.paired_bootstrap(a, a, n_boot=500)
    assert same["diff"] == 0.0 and same["p_not_better"] == 1.0
    with pytest.raises(ValueError, match="same queries"):
        metrics.paired_bootstrap(a, {"t": a["t"][:10]})
