"""Base-model nDCG@10 of each built task, with sentence-transformers' InformationRetrievalEvaluator.

    nice python data/measure_base.py                       # fast subsets from task.toml (CPU)
    python data/measure_base.py --full --device cuda       # full sets (GPU)
    python data/measure_base.py --model PATH               # another model folder

Prints per task: nDCG@10, the bootstrap standard error over queries, and the sizes used; the last
line is the mean over the tasks of each set with the standard error of that mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autoembed.task.base_model import offline_env, resolve_base_model  # noqa: E402
from autoembed.task.data import load_retrieval_task  # noqa: E402

SETS = {"dev": REPO / "tasks/embed/data/dev", "heldout": REPO / "autoembed/sealed/data/heldout"}


def per_query_ndcg(model, task, batch_size: int) -> np.ndarray:
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    class Recording(InformationRetrievalEvaluator):
        def compute_metrics(self, queries_result_list):
            values = []
            for itr, results in enumerate(queries_result_list):
                relevant = self.relevant_docs[self.queries_ids[itr]]
                top = sorted(results, key=lambda x: (-x["score"], x["corpus_id"]))[:10]
                dcg = self.compute_dcg_at_k([1 if h["corpus_id"] in relevant else 0 for h in top], 10)
                values.append(dcg / self.compute_dcg_at_k([1] * len(relevant), 10))
            self.per_query = np.array(values)
            return super().compute_metrics(queries_result_list)

    evaluator = Recording(
        queries=task.queries, corpus=task.corpus,
        relevant_docs={q: set(d) for q, d in task.qrels.items()},
        ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[10], precision_recall_at_k=[10], map_at_k=[100],
        batch_size=batch_size, write_csv=False, name=task.name,
    )
    metrics = evaluator(model)
    key = next(k for k in metrics if k.endswith("cosine_ndcg@10"))
    assert abs(metrics[key] - evaluator.per_query.mean()) < 1e-9, (metrics[key], evaluator.per_query.mean())
    return evaluator.per_query


def bootstrap_se(values: np.ndarray, rounds: int = 1000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(rounds, len(values)))
    return float(values[idx].mean(axis=1).std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full sets instead of the fast subsets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="model folder (default: the pinned base model)")
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    offline_env()
    from sentence_transformers import SentenceTransformer

    spec = tomllib.loads((REPO / "tasks/embed/task.toml").read_text())
    model_path = args.model or resolve_base_model(spec["base_model"]["id"], spec["base_model"]["sha256"])
    model = SentenceTransformer(str(model_path), device=args.device).float()  # fp32 even from fp16 weights
    model.max_seq_length = spec["eval"]["max_seq_length"]
    n_q, n_d = spec["eval"]["fast_queries"], spec["eval"]["fast_docs"]
    results = {}
    for set_name in args.sets:
        per_task = {}
        for folder in sorted(p for p in SETS[set_name].iterdir() if p.is_dir()):
            task = load_retrieval_task(folder)
            if not args.full:
                task = task.subset(n_q, n_d)
            start = time.time()
            values = per_query_ndcg(model, task, args.batch_size)
            per_task[folder.name] = {"ndcg@10": float(values.mean()), "se": bootstrap_se(values),
                                     "queries": len(task.queries), "docs": len(task.corpus),
                                     "seconds": round(time.time() - start, 1)}
            print(f"{set_name}/{folder.name}: {json.dumps(per_task[folder.name])}", flush=True)
        mean = float(np.mean([r["ndcg@10"] for r in per_task.values()]))
        se = float(np.sqrt(sum(r["se"] ** 2 for r in per_task.values())) / len(per_task))
        results[set_name] = {"tasks": per_task, "mean": mean, "se_of_mean": se}
        print(f"{set_name} mean nDCG@10 {mean:.4f} (se {se:.4f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
