"""BM25 baseline: cross-checked against rank_bm25 (an independent implementation) and an independent nDCG."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from autoembed.paths import REPO_ROOT
from autoembed.task import bm25
from autoembed.task.data import RetrievalTask, load_retrieval_task

REAL_DEV = REPO_ROOT / "tasks" / "embed" / "data" / "dev"
VOCAB = [f"w{i}" for i in range(300)]


def synthetic_task(seed: int = 0, n_docs: int = 150, n_queries: int = 40) -> RetrievalTask:
    """Documents drawn from a Zipf-like vocabulary; each query takes a few words of its relevant document
    (and some noise), so BM25 finds many but not all of them."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(VOCAB))]
    corpus = {f"d{i:03d}": " ".join(rng.choices(VOCAB, weights, k=rng.randint(5, 60))) for i in range(n_docs)}
    queries, qrels = {}, {}
    for j in range(n_queries):
        target = rng.choice(sorted(corpus))
        words = rng.sample(corpus[target].split(), k=min(3, len(corpus[target].split()))) + rng.choices(VOCAB, k=2)
        queries[f"q{j:02d}"] = " ".join(words)
        qrels[f"q{j:02d}"] = {target: 1}
        if j % 5 == 0:  # some queries with two relevant documents, one of them graded 2
            other = rng.choice(sorted(corpus))
            qrels[f"q{j:02d}"][other] = 2
    return RetrievalTask("synthetic", queries, corpus, qrels)


def small_real_task() -> RetrievalTask | None:
    folder = REAL_DEV / "debian"
    if not (folder / "qrels.tsv").is_file():
        return None
    return load_retrieval_task(folder, "debian").subset(30, 300)


def tasks_to_check() -> list[RetrievalTask]:
    real = small_real_task()
    return [synthetic_task(0), synthetic_task(1)] + ([real] if real else [])


class LuceneBM25(BM25Okapi):
    """rank_bm25's Okapi scoring with Lucene's idf, log(1 + (N - n + 0.5) / (n + 0.5)): the variant bm25s
    uses by default. Its scores are (k1 + 1) times bm25s's, so the rankings must be the same."""

    def _calc_idf(self, nd):
        self.idf = {word: math.log(1 + (self.corpus_size - freq + 0.5) / (freq + 0.5)) for word, freq in nd.items()}


def reference_rankings(task: RetrievalTask, scorer_cls) -> tuple[list[str], list[list[str]], list[np.ndarray]]:
    doc_ids = sorted(task.corpus)
    model = scorer_cls([bm25.tokenize(task.corpus[d]) for d in doc_ids], k1=1.5, b=0.75)
    qids = [q for q in task.queries if task.qrels.get(q)]
    ranked, scores = [], []
    for q in qids:
        s = np.asarray(model.get_scores(bm25.tokenize(task.queries[q])), dtype=np.float64)
        order = sorted(range(len(doc_ids)), key=lambda i: (-s[i], doc_ids[i]))[:100]
        ranked.append([doc_ids[i] for i in order])
        scores.append(s)
    return qids, ranked, scores


def independent_ndcg10(ranked: list[str], rel: dict[str, int]) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(rel.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def test_tokenize_splits_identifiers_and_drops_stopwords():
    assert bm25.tokenize("The getModelPath() of HTTPServer: get_model_path, x2 a") == [
        "get", "model", "path", "http", "server", "get", "model", "path", "x2"]
    assert bm25.tokenize("") == []


@pytest.mark.parametrize("task", tasks_to_check(), ids=lambda t: t.name)
def test_bm25_ranks_like_rank_bm25_with_lucene_idf(task):
    qids, ref_ranked, ref_scores = reference_rankings(task, LuceneBM25)
    our_qids, doc_ids, ranked = bm25.rank(task)
    assert our_qids == qids
    agree = 0
    for row, q in enumerate(qids):
        ours = [doc_ids[i] for i in ranked[row]]
        if ours[:10] == ref_ranked[row][:10]:
            agree += 1
        else:  # only a float32 near-tie may reorder: the reference scores of both lists must match
            s = ref_scores[row]
            pos = {d: i for i, d in enumerate(doc_ids)}
            assert np.allclose(sorted((s[pos[d]] for d in ours[:10]), reverse=True),
                               sorted((s[pos[d]] for d in ref_ranked[row][:10]), reverse=True), rtol=1e-5, atol=1e-6)
    assert agree >= 0.95 * len(qids)
    result = bm25.evaluate_bm25({task.name: task}, bootstrap=0)
    expected = float(np.mean([independent_ndcg10(ref_ranked[i], task.qrels[q]) for i, q in enumerate(qids)]))
    assert result["tasks"][task.name]["ndcg@10"] == pytest.approx(expected, abs=1e-3)


def test_bm25_scores_are_rank_bm25_scores_up_to_the_k1_plus_1_factor():
    import bm25s

    task = synthetic_task(2)
    doc_ids = sorted(task.corpus)
    tokens = [bm25.tokenize(task.corpus[d]) for d in doc_ids]
    ours = bm25s.BM25(k1=bm25.K1, b=bm25.B, method="lucene")
    ours.index(tokens, show_progress=False)
    theirs = LuceneBM25(tokens, k1=1.5, b=0.75)
    for q in list(task.queries)[:10]:
        qt = bm25.tokenize(task.queries[q])
        np.testing.assert_allclose(ours.get_scores(qt) * (1.5 + 1), theirs.get_scores(qt), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", tasks_to_check(), ids=lambda t: t.name)
def test_bm25_ndcg_close_to_plain_okapi(task):
    """rank_bm25's BM25Okapi uses Robertson's idf (floored for very common words): a different variant,
    so rankings differ slightly; nDCG@10 must still be close."""
    qids, ref_ranked, _ = reference_rankings(task, BM25Okapi)
    okapi = float(np.mean([independent_ndcg10(ref_ranked[i], task.qrels[q]) for i, q in enumerate(qids)]))
    ours = bm25.evaluate_bm25({task.name: task}, bootstrap=0)["tasks"][task.name]["ndcg@10"]
    assert ours == pytest.approx(okapi, abs=0.05)
    assert ours > 0.3  # the queries share words with their documents: BM25 must find many


def test_result_has_the_evaluator_shape_and_handles_unmatched_queries():
    task = synthetic_task(3)
    task.queries["qx"] = "zzz unknown words only"
    task.qrels["qx"] = {"d005": 1}
    task.qrels["q01"]["not-in-corpus"] = 1  # a relevant document missing from the corpus still counts
    result = bm25.evaluate_bm25({"a": task, "b": synthetic_task(4)}, bootstrap=50)
    assert set(result) >= {"tasks", "mean", "seconds", "device"}
    row = result["tasks"]["a"]
    assert set(row) >= {"ndcg@10", "mrr@10", "recall@10", "recall@100", "n_queries", "n_docs", "ndcg@10_ci", "ndcg@10_se"}
    assert row["n_queries"] == len(task.queries) and row["n_docs"] == len(task.corpus)
    lo, hi = result["mean"]["ndcg@10_ci"]
    assert lo <= result["mean"]["ndcg@10"] <= hi
    assert result["mean"]["ndcg@10"] == pytest.approx((row["ndcg@10"] + result["tasks"]["b"]["ndcg@10"]) / 2)
    qids, doc_ids, ranked = bm25.rank(task)
    unmatched = ranked[qids.index("qx")]
    assert [doc_ids[i] for i in unmatched[:3]] == sorted(task.corpus)[:3]  # all scores 0: ties in id order
    per_q = bm25.per_query(task)
    assert per_q["recall@100"][qids.index("q01")] <= 0.5 + 1e-9
