"""Retrieval metrics and their uncertainty: exact cosine top-k search, per-query nDCG@10 / MRR@10 /
Recall@k, and bootstrap confidence intervals over queries.

Conventions (the same as sentence-transformers' InformationRetrievalEvaluator and trec_eval):
- documents are ranked by descending cosine similarity; equal scores are ordered by ascending
  document id (string order), so results do not depend on corpus order or chunking;
- DCG@k = sum_i rel_i / log2(i + 1) over ranks i = 1..k with linear gain (rel is the qrels grade;
  1 for binary qrels); the ideal DCG comes from the qrels grades sorted in descending order, so a
  relevant document missing from the corpus still counts against the query;
- MRR@k = 1 / rank of the first document with grade > 0 within the top k (0 if none);
- Recall@k = relevant documents in the top k / relevant documents in the qrels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from autoembed.task.resample import (  # noqa: F401 - the bootstrap's home; re-exported for the evaluator's callers
    _interval, bootstrap, bootstrap_replicates, paired_bootstrap)

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")
SEARCH_DEPTH = 100  # the largest k any metric needs


# ---------------------------------------------------------------------------------------------
# Exact search
# ---------------------------------------------------------------------------------------------


def doc_id_ranks(doc_ids: list[str]) -> torch.Tensor:
    """Position of each document in ascending id order: the tie-break key of the ranking."""
    order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__)
    ranks = torch.empty(len(doc_ids), dtype=torch.long)
    ranks[torch.tensor(order, dtype=torch.long)] = torch.arange(len(doc_ids))
    return ranks


def cosine_top_k(
    queries: torch.Tensor,
    docs: torch.Tensor,
    k: int,
    tie_rank: torch.Tensor | None = None,
    max_scores: int = 1 << 26,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k documents per query by cosine similarity, in fp32 on the tensors' device.

    Returns (scores, indices), both (n_queries, min(k, n_docs)), sorted by descending score and,
    among equal scores, by ascending tie_rank (default: document index). Queries are processed in
    chunks so that at most max_scores similarities are held at once.
    """
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise ValueError(f"cosine_top_k needs 2-D embeddings of equal width, got {tuple(queries.shape)} and {tuple(docs.shape)}")
    n_docs = docs.shape[0]
    k = min(k, n_docs)
    if tie_rank is None:
        tie_rank = torch.arange(n_docs)
    tie_rank = tie_rank.to(docs.device)
    q = F.normalize(queries.float(), dim=-1)
    d = F.normalize(docs.float(), dim=-1)
    rows = max(1, max_scores // max(n_docs, 1))
    all_scores, all_idx = [], []
    for start in range(0, q.shape[0], rows):
        sims = q[start : start + rows] @ d.T
        scores, idx = sims.topk(k, dim=1, largest=True, sorted=True)
        # topk orders equal scores arbitrarily, and may cut a tie at the k-th place arbitrarily:
        # rows with a tie at the boundary are reselected by an integer key that puts every score
        # above the cut first and then the tied documents with the smallest tie_rank.
        threshold = scores[:, -1:]
        boundary = (sims >= threshold).sum(dim=1) > k
        if bool(boundary.any()):
            b_sims, b_thr = sims[boundary], threshold[boundary]
            key = torch.where(b_sims > b_thr, tie_rank, 2 * n_docs)
            key = torch.where(b_sims == b_thr, tie_rank + n_docs, key)
            b_idx = key.topk(k, dim=1, largest=False).indices
            idx[boundary] = b_idx
            scores[boundary] = b_sims.gather(1, b_idx)
        scores, idx = _sort_ties(scores, idx, tie_rank)
        all_scores.append(scores)
        all_idx.append(idx)
    if not all_scores:
        empty = torch.empty(0, k, device=docs.device)
        return empty, empty.long()
    return torch.cat(all_scores), torch.cat(all_idx)


def _sort_ties(scores: torch.Tensor, idx: torch.Tensor, tie_rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by (-score, tie_rank): a stable sort by score after a sort by tie rank."""
    by_rank = tie_rank[idx].argsort(dim=1)
    scores, idx = scores.gather(1, by_rank), idx.gather(1, by_rank)
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, by_score), idx.gather(1, by_score)


# ---------------------------------------------------------------------------------------------
# Per-query metrics
# ---------------------------------------------------------------------------------------------


def retrieved_gains(ranked: np.ndarray, qrels: list[dict[int, float]]) -> np.ndarray:
    """Grade of each retrieved document: ranked is (n_queries, depth) document indices (-1 for no
    document); qrels[i] maps document index -> grade for query i (a negative index stands for a
    relevant document absent from the corpus). Returns float (n_queries, depth)."""
    ranked = np.asarray(ranked, dtype=np.int64)
    gains = np.zeros(ranked.shape, dtype=np.float64)
    rows = [(i, d, g) for i, rel in enumerate(qrels) for d, g in rel.items() if d >= 0 and g > 0]
    if not rows or ranked.size == 0:
        return gains
    q_idx, d_idx, grade = (np.array(col) for col in zip(*rows))
    width = int(max(d_idx.max(), ranked.max(initial=0))) + 1
    keys = q_idx.astype(np.int64) * width + d_idx
    order = np.argsort(keys)
    keys, grade = keys[order], grade[order].astype(np.float64)
    wanted = np.arange(len(ranked), dtype=np.int64)[:, None] * width + ranked
    pos = np.clip(np.searchsorted(keys, wanted), 0, len(keys) - 1)
    hit = (keys[pos] == wanted) & (ranked >= 0)
    gains[hit] = grade[pos[hit]]
    return gains


def ideal_gains(qrels: list[dict], k: int) -> np.ndarray:
    """(n_queries, k) grades of each query's qrels sorted descending, zero padded."""
    out = np.zeros((len(qrels), k), dtype=np.float64)
    for i, rel in enumerate(qrels):
        grades = sorted((float(g) for g in rel.values() if g > 0), reverse=True)[:k]
        out[i, : len(grades)] = grades
    return out


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(gains: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    gains, ideal = _pad(gains, k), _pad(ideal, k)
    disc = _discounts(k)
    dcg = (gains[:, :k] * disc).sum(axis=1)
    idcg = (ideal[:, :k] * disc).sum(axis=1)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def mrr_at_k(gains: np.ndarray, k: int) -> np.ndarray:
    hit = _pad(gains, k)[:, :k] > 0
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), 1.0 / (first + 1), 0.0)


def recall_at_k(gains: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    found = (_pad(gains, k)[:, :k] > 0).sum(axis=1)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    return np.divide(found, n_relevant, out=np.zeros(len(found)), where=n_relevant > 0)


def _pad(matrix: np.ndarray, k: int) -> np.ndarray:
    """Fewer than k columns (a corpus smaller than k) means zero gain at the missing ranks."""
    if matrix.shape[1] >= k:
        return matrix
    return np.pad(matrix, ((0, 0), (0, k - matrix.shape[1])))


def per_query_metrics(ranked: np.ndarray, qrels: list[dict[int, float]]) -> dict[str, np.ndarray]:
    """All METRICS for each query, from its ranked document indices and its qrels (index -> grade)."""
    gains = retrieved_gains(ranked, qrels)
    n_relevant = np.array([sum(1 for g in rel.values() if g > 0) for rel in qrels])
    return {
        "ndcg@10": ndcg_at_k(gains, ideal_gains(qrels, 10), 10),
        "mrr@10": mrr_at_k(gains, 10),
        "recall@10": recall_at_k(gains, n_relevant, 10),
        "recall@100": recall_at_k(gains, n_relevant, 100),
    }


# ---------------------------------------------------------------------------------------------
# Uncertainty
# ---------------------------------------------------------------------------------------------


def standard_error(values: np.ndarray) -> float:
    """The analytic standard error of a mean (a cross-check on the bootstrap's)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
