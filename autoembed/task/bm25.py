"""BM25 baseline over a RetrievalTask (bm25s, Lucene variant, k1=1.5, b=0.75), scored with the same
metrics and in the same dict shape as the evaluator, so it sits in one table with the models.

Tokenization: camelCase split, lowercased, runs of letters and digits of two or more characters
(so `get_model_path` and `getModelPath` both become get / model / path), English stopwords dropped,
no stemming. Documents are ranked by descending score, equal scores by ascending document id (the
evaluator's convention).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np

from autoembed.task import metrics
from autoembed.task.data import RetrievalTask
from autoembed.task.spec import MAIN_METRIC
from autoembed.task.evaluate import _indexed_qrels, _summarize  # one result shape for models and BM25

K1, B = 1.5, 0.75
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_TOKEN = re.compile(r"[a-z0-9]{2,}")


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


STOPWORDS = _stopwords()


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(_CAMEL.sub(" ", text).lower()) if t not in STOPWORDS]


def rank(task: RetrievalTask, depth: int = metrics.SEARCH_DEPTH) -> tuple[list[str], list[str], np.ndarray]:
    """(judged query ids, doc ids in ascending order, ranked doc indices (n_queries, min(depth, n_docs)))."""
    import bm25s

    doc_ids = sorted(task.corpus)
    query_ids = [q for q in task.queries if task.qrels.get(q)]
    if not doc_ids or not query_ids:
        raise ValueError(f"task {task.name!r} has no documents or no judged queries to rank")
    retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
    retriever.index([tokenize(task.corpus[d]) for d in doc_ids], show_progress=False)
    depth = min(depth, len(doc_ids))
    ranked = np.empty((len(query_ids), depth), dtype=np.int64)
    for row, qid in enumerate(query_ids):
        token_ids = retriever.get_tokens_ids(tokenize(task.queries[qid]))
        if token_ids:
            scores = retriever.get_scores_from_ids(token_ids)
        else:  # no query word occurs in the corpus: every document scores 0, ties go by id
            scores = np.zeros(len(doc_ids), dtype=np.float32)
        # a stable sort of -score over documents in ascending id order puts ties in id order
        ranked[row] = np.argsort(-scores, kind="stable")[:depth]
    return query_ids, doc_ids, ranked


def per_query(task: RetrievalTask) -> dict[str, np.ndarray]:
    """Each metric for each judged query of the task (in the order of task.queries)."""
    query_ids, doc_ids, ranked = rank(task)
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    return metrics.per_query_metrics(ranked, [_indexed_qrels(task.qrels[q], doc_index) for q in query_ids])


def evaluate_bm25(tasks: dict[str, RetrievalTask], *, bootstrap: int = 1000, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict:
    """The evaluator's result shape: {"tasks": {name: {metric, ..., n_queries, n_docs, ndcg@10_ci,
    ndcg@10_se}}, "mean": {...}, "seconds", "device": "bm25"}."""
    started = time.perf_counter()
    if not tasks:
        raise ValueError("no tasks to evaluate")
    say = progress or (lambda line: None)
    per_task: dict[str, dict[str, np.ndarray]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for name, task in tasks.items():
        t0 = time.perf_counter()
        per_task[name] = per_query(task)
        shapes[name] = (len(per_task[name][MAIN_METRIC]), len(task.corpus))
        say(f"{name}: bm25 {MAIN_METRIC} {per_task[name][MAIN_METRIC].mean():.4f}  {shapes[name][0]} queries x "
            f"{shapes[name][1]} docs, {time.perf_counter() - t0:.2f}s")
    result = _summarize(per_task, shapes, bootstrap, seed)
    result.update(seconds=time.perf_counter() - started, device="bm25", dtype="")
    return result
