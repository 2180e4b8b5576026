"""Evaluator speed: autoembed's evaluate_model against sentence-transformers' InformationRetrievalEvaluator,
same model, same data, same process. Prints a table and the speed ratios, writes JSON with --out.

    PYTHONPATH=. python bench/bench_evaluator.py                       # debian dev task, all of it
    PYTHONPATH=. python bench/bench_evaluator.py --queries 200 --docs 2000 --out cpu.json

What cold and warm mean here (the model is loaded and moved to the device before any timing, and a
tiny forward pass initializes CUDA, cuBLAS and the attention kernels, so no row pays for that):
- ours cold:       first call with an empty token cache: tokenizes every text and writes the cache.
- ours warm-disk:  the token cache is on disk but not in memory (what the agent's next task.py evaluate
                   call pays in a new process, minus importing sentence-transformers, loading the model
                   and the first CUDA kernel loads: about 1 s more on an H100).
- ours warm:       token ids in memory; what a training loop pays per evaluation (median of repeats).
- ST cold / warm:  first call / median of repeats (it has no cache; the difference is allocator and
                   kernel warm-up).
Only stdlib + torch + sentence-transformers; no APIs that differ between sentence-transformers 6.0.1 and 6.2.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from autoembed.task import encode
from autoembed.task.base_model import offline_env, resolve_base_model
from autoembed.task.data import RetrievalTask, load_retrieval_task
from autoembed.task.evaluate import evaluate_model
from autoembed.task.spec import load_spec

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def ir_evaluator_class():
    try:  # the home of the evaluator in sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:
        from sentence_transformers.evaluation import InformationRetrievalEvaluator
    return InformationRetrievalEvaluator


def load_task(args) -> RetrievalTask:
    if args.synthetic:
        from tests.stdlib_fixture import stdlib_task

        return stdlib_task(args.queries or 200, args.docs or 700, ties=False)
    folder = Path(args.data) if args.data else load_spec(args.spec).dev_dir / args.task
    if not folder.is_dir():
        sys.exit(f"no task data at {folder}: pass --data DIR (a BEIR folder) or --synthetic")
    task = load_retrieval_task(folder, args.task)
    if args.queries or args.docs:
        task = task.subset(args.queries or len(task.queries), args.docs or len(task.corpus))
    return task


def count_tokens(model, task: RetrievalTask, cache_dir: Path) -> int:
    queries = encode.tokenize(model, list(task.queries.values()), "query", cache_dir)
    docs = encode.tokenize(model, list(dict.fromkeys(task.corpus.values())), "document", cache_dir)
    return queries.n_tokens + docs.n_tokens


def warm_up(model, device: torch.device) -> None:
    with torch.inference_mode():
        model.encode(["warm up the device"] * 8, batch_size=8, device=str(device))
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                model.encode(["warm up the device"] * 8, batch_size=8, device=str(device))
            torch.cuda.synchronize()


class Ours:
    """evaluate_model with its own token cache folder; cold on the first call."""

    def __init__(self, model, task, device, **kw):
        self.model, self.task, self.device, self.kw = model, task, device, kw
        self._cache = tempfile.TemporaryDirectory()
        self.times: dict[str, list[float]] = {"cold": [], "warm_disk": [], "warm": []}
        self.result = None
        self.parts: list[dict] = []

    def run(self, kind: str) -> None:
        if kind in ("cold", "warm_disk"):
            encode.clear_memory_cache()
        t0 = time.perf_counter()
        result = evaluate_model(self.model, {self.task.name: self.task}, device=str(self.device),
                                cache_dir=Path(self._cache.name), **self.kw)
        self.times[kind].append(time.perf_counter() - t0)
        self.result = self.result or result
        if kind == "warm":
            self.parts.append(result["timing"])

    def summary(self) -> dict:
        warm = self.times["warm"]
        best = min(range(len(warm)), key=warm.__getitem__)
        self._cache.cleanup()
        return {
            "cold_s": self.times["cold"][0],
            "warm_disk_s": self.times["warm_disk"][0],
            "warm_s": statistics.median(warm),
            "warm_all_s": warm,
            "warm_parts": {k: v for k, v in self.parts[best].items() if k != "token_cache"},
            "metrics": {m: self.result["tasks"][self.task.name][m] for m in METRICS},
            "dtype": self.result["dtype"],
        }


class ST:
    """sentence-transformers' InformationRetrievalEvaluator; no cache, so every call is the same work."""

    def __init__(self, model, task, batch_size: int):
        self.model = model
        self.evaluator = ir_evaluator_class()(
            task.queries, task.corpus, {q: set(rel) for q, rel in task.qrels.items()},
            batch_size=batch_size, precision_recall_at_k=[1, 3, 5, 10, 100], write_csv=False,
        )
        self.times: dict[str, list[float]] = {"cold": [], "warm": []}
        self.scores = None

    def run(self, kind: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            scores = self.evaluator(self.model)
            self.times["cold" if kind == "cold" else "warm"].append(time.perf_counter() - t0)
        self.scores = self.scores or scores

    def summary(self) -> dict:
        prefix = f"{self.model.similarity_fn_name}_"
        return {
            "cold_s": self.times["cold"][0],
            "warm_s": statistics.median(self.times["warm"]),
            "warm_all_s": self.times["warm"],
            "metrics": {m: float(self.scores[prefix + m]) for m in METRICS},
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="embed", help="task spec whose dev data and base model to use")
    parser.add_argument("--task", default="debian", help="dev task name (default: debian)")
    parser.add_argument("--data", default=None, help="a BEIR task folder instead of the dev task")
    parser.add_argument("--synthetic", action="store_true", help="stdlib docstrings instead of the dev data")
    parser.add_argument("--queries", type=int, default=0, help="subset: this many queries (0: all)")
    parser.add_argument("--docs", type=int, default=0, help="subset: this many documents (0: all)")
    parser.add_argument("--model", default=None, help="model folder (default: the spec's base model)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=3, help="warm repeats per method (median reported)")
    parser.add_argument("--budgets", default=None,
                        help="comma-separated token budgets to sweep for ours (default: 16384,32768,65536,131072 on GPU)")
    parser.add_argument("--skip-st", action="store_true", help="time ours only")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    offline_env()
    from sentence_transformers import SentenceTransformer
    import sentence_transformers

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = load_spec(args.spec)
    model_path = args.model or resolve_base_model(spec.base_model, spec.base_model_sha256)
    task = load_task(args)

    t0 = time.perf_counter()
    model = SentenceTransformer(str(model_path), device=str(device))
    load_s = time.perf_counter() - t0
    weights_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if weights_dtype != "float32":  # e.g. a half-precision copy carried to a machine without the package
        model.float()
    model.eval()
    warm_up(model, device)
    with tempfile.TemporaryDirectory() as scratch:
        n_tokens = count_tokens(model, task, Path(scratch))
    encode.clear_memory_cache()

    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "model": str(model_path),
        "weights_stored_as": weights_dtype,
        "max_seq_length": model.max_seq_length,
        "task": task.name,
        "queries": len(task.queries),
        "docs": len(task.corpus),
        "tokens": n_tokens,
        "model_load_s": load_s,
        "command": " ".join(["PYTHONPATH=. python bench/bench_evaluator.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"{task.name}: {env['queries']} queries x {env['docs']} docs, {n_tokens:,} tokens, {env['device_name']} ({device}), "
          f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}; model load {load_s:.2f}s",
          flush=True)

    # Methods take turns (cold calls first, then warm rounds), so drifting load on a shared machine
    # hits every method alike.
    runners: dict[str, object] = {"ours": Ours(model, task, device)}
    if device.type == "cuda":
        runners["ours fp32"] = Ours(model, task, device, amp_dtype=None)
    if not args.skip_st:
        runners["ST defaults (batch 32, fp32)"] = ST(model, task, batch_size=32)
        if device.type == "cuda":
            runners["ST fp16, batch 512"] = ST(copy.deepcopy(model).half(), task, batch_size=512)
    for kind in ["cold", "warm_disk"] + ["warm"] * args.repeats:
        for name, runner in runners.items():
            if kind == "warm_disk" and isinstance(runner, ST):
                continue
            runner.run(kind)
            print(f"  {name} {kind}: {runner.times[kind][-1]:.3f}s", flush=True)
    rows = {name: runner.summary() for name, runner in runners.items()}
    budgets = args.budgets or ("16384,32768,65536,131072" if device.type == "cuda" else "")
    sweep = {}
    for budget in [int(b) for b in budgets.split(",") if b.strip()]:
        runner = Ours(model, task, device, token_budget=budget)
        for kind in ["cold", "warm_disk"] + ["warm"] * args.repeats:
            runner.run(kind)
        sweep[budget] = runner.summary()["warm_s"]
        print(f"  ours token_budget={budget}: warm {sweep[budget]:.3f}s", flush=True)

    print()
    print(f"{'method':<30} {'cold s':>8} {'warm-disk s':>12} {'warm s':>8} " + " ".join(f"{m:>10}" for m in METRICS))
    for name, row in rows.items():
        disk = f"{row['warm_disk_s']:.3f}" if "warm_disk_s" in row else "-"
        print(f"{name:<30} {row['cold_s']:>8.3f} {disk:>12} {row['warm_s']:>8.3f} "
              + " ".join(f"{row['metrics'][m]:>10.5f}" for m in METRICS))
    parts = rows["ours"]["warm_parts"]
    print(f"ours warm, best repeat: encode {parts['tokenize_encode']:.3f}s, search+metrics {parts['search_metrics']:.3f}s "
          f"(rest: bootstrap and bookkeeping)")
    ratios = {}
    reference = rows.get("ST defaults (batch 32, fp32)")
    if reference:
        ours = rows["ours"]
        ratios["ST defaults warm / ours warm"] = reference["warm_s"] / ours["warm_s"]
        ratios["ST defaults cold / ours cold"] = reference["cold_s"] / ours["cold_s"]
        if "ST fp16, batch 512" in rows:
            ratios["ST fp16+512 warm / ours warm"] = rows["ST fp16, batch 512"]["warm_s"] / ours["warm_s"]
        for name, value in ratios.items():
            print(f"{name}: {value:.1f}x")
        drift = {name: max(abs(row["metrics"][m] - reference["metrics"][m]) for m in METRICS) for name, row in rows.items()}
        print("max |metric - ST defaults|: " + ", ".join(f"{name} {value:.2e}" for name, value in drift.items()))
    else:
        drift = {}

    if args.out:
        out = {"env": env, "rows": rows, "ratios": ratios, "token_budget_sweep_warm_s": sweep, "max_abs_metric_diff_vs_st": drift}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
