"""Score a sentence-transformers model on retrieval tasks: nDCG@10 (main), MRR@10, Recall@10/100,
per task and as a mean over tasks, with bootstrap confidence intervals over queries.

    from autoembed.task.evaluate import evaluate
    evaluate("final_model")                 # the dev proxy; fast subset on CPU, full set on GPU

Metrics agree with sentence-transformers' InformationRetrievalEvaluator (see autoembed.task.metrics
for the exact conventions); the speed comes from autoembed.task.encode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from autoembed.task import metrics
from autoembed.task.data import RetrievalTask, load_retrieval_task
from autoembed.task.encode import default_amp_dtype, encode_texts
from autoembed.task.spec import MAIN_METRIC, TaskSpec, load_spec


class NonFiniteEmbeddings(ValueError):
    """The model produced NaN or infinite embeddings (in fp32 too)."""


def default_fast() -> bool:
    """Fast mode (the documented subset) when no CUDA device is available."""
    return not torch.cuda.is_available()


def default_cache_dir() -> Path:
    from autoembed.paths import home

    return home() / "tokens"


def load_dev_tasks(spec: TaskSpec, fast: bool | None = None, only: list[str] | None = None) -> dict[str, RetrievalTask]:
    """The dev proxy's tasks from spec.dev_dir; fast=True gives each task's documented subset
    (spec.fast_queries queries, spec.fast_docs documents). only restricts to the named tasks."""
    fast = default_fast() if fast is None else fast
    names = list(spec.dev_tasks)
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise ValueError(f"unknown dev task(s) {unknown}; the dev tasks of {spec.name!r} are {names}")
        names = [name for name in names if name in only]
    return {name: _load_task(spec.dev_dir / name, name, spec.fast_queries if fast else 0, spec.fast_docs if fast else 0) for name in names}


@lru_cache(maxsize=32)
def _load_task(folder: Path, name: str, n_queries: int, n_docs: int) -> RetrievalTask:
    # cached per process: the dev files are read-only and decompressing them costs more than scoring
    task = load_retrieval_task(folder, name)
    return task.subset(n_queries, n_docs) if n_queries else task


def evaluate(model_path, task: str = "embed", fast: bool | None = None, **kw) -> dict:
    """The dev proxy score of the model at model_path (what the agent's task.py calls).
    kw: tasks (list of dev task names), and any keyword of evaluate_model."""
    spec = load_spec(task)
    fast = default_fast() if fast is None else fast
    tasks = load_dev_tasks(spec, fast=fast, only=kw.pop("tasks", None))
    kw.setdefault("max_seq_length", spec.max_seq_length)
    result = evaluate_model(model_path, tasks, **kw)
    result["fast"] = fast
    return result


def load_model(model, device: str | torch.device | None = None):
    """A SentenceTransformer from a folder (offline), or the given model itself."""
    if isinstance(model, (str, Path)):
        from sentence_transformers import SentenceTransformer

        from autoembed.task.base_model import offline_env

        offline_env()
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"no model at {path}: pass a folder saved with SentenceTransformer.save()")
        return SentenceTransformer(str(path), device=str(device) if device else None)
    if not hasattr(model, "preprocess") and not hasattr(model, "encode"):
        raise TypeError(f"expected a SentenceTransformer or a path to one, got {type(model).__name__}")
    return model


@dataclass
class EvalOptions:
    """evaluate_model()'s keyword arguments (see evaluate_model)."""
    device: str | None = None
    bootstrap: int = 1000
    seed: int = 0
    cache_dir: Path | None = None
    progress: Callable[[str], None] | None = None
    return_per_query: bool = False
    max_seq_length: int | None = None
    token_budget: int | None = None
    amp_dtype: torch.dtype | str | None = "auto"


def evaluate_model(model, tasks: dict[str, RetrievalTask], **options) -> dict:
    """Score model (a SentenceTransformer or a path to one) on tasks.

    Keywords (EvalOptions):
    device: where to run (default: the given model's device, else cuda when available).
    bootstrap: replicates for the CIs (0: no resampling, the CI collapses to the point).
    seed: the bootstrap's seed.
    cache_dir: where token ids are cached (default autoembed.paths.home()/"tokens").
    progress: a callable taking one line of text, told about each step.
    return_per_query: add result["per_query"][task] = {"query_ids": [...], "ndcg@10": [...]}, aligned
      across models, for paired comparisons (metrics.paired_bootstrap).
    max_seq_length: cap on the model's max_seq_length during evaluation (restored afterwards).
    token_budget: padded tokens per batch (default 65536 on GPU, 8192 on CPU).
    amp_dtype: autocast dtype; "auto" is fp16 on GPU and, on CPU, encode.cpu_precision() (fp32 unless
      AUTOEMBED_CPU_PRECISION asks for bf16). None: fp32 everywhere.
    """
    opts = EvalOptions(**options)  # an unknown keyword is a TypeError, as with a plain signature
    started = time.perf_counter()
    if not tasks:
        raise ValueError("no tasks to evaluate")
    say = opts.progress or (lambda line: None)
    model = load_model(model, opts.device)
    loaded = time.perf_counter()
    run_device = torch.device(opts.device) if opts.device else _model_device(model)
    amp_dtype = opts.amp_dtype
    if amp_dtype == "auto":
        amp_dtype = default_amp_dtype(run_device)
    elif isinstance(amp_dtype, str):
        amp_dtype = getattr(torch, amp_dtype)
    encoding = _Encoding(run_device, default_cache_dir() if opts.cache_dir is None else Path(opts.cache_dir),
                         opts.token_budget, amp_dtype)

    restore = _prepare(model, run_device, opts.max_seq_length)
    timing = {"load_model": loaded - started, "tokenize_encode": 0.0, "search_metrics": 0.0}
    sources: list[str] = []
    encoders: list[str] = []
    per_task: dict[str, dict[str, np.ndarray]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    query_ids: dict[str, list[str]] = {}
    try:
        for name, task in tasks.items():
            per_task[name], query_ids[name], stats, (encode_s, search_s) = _score_task(model, name, task, encoding)
            timing["tokenize_encode"] += encode_s
            timing["search_metrics"] += search_s
            sources += stats.get("source", [])
            encoders += stats.get("encoder", [])
            shapes[name] = (len(query_ids[name]), len(task.corpus))
            say(
                f"{name}: {MAIN_METRIC} {per_task[name][MAIN_METRIC].mean():.4f}  {len(query_ids[name])} queries x "
                f"{len(task.corpus)} docs, {stats.get('tokens', 0)} tokens ({'/'.join(stats.get('source', []))}), "
                f"encode {encode_s:.2f}s, search {search_s:.2f}s"
            )
    finally:
        restore()

    result = _summarize(per_task, shapes, opts.bootstrap, opts.seed)
    result["seconds"] = time.perf_counter() - started
    result["device"] = str(run_device)
    result["dtype"] = str(amp_dtype or torch.float32).removeprefix("torch.")
    result["encoder"] = "+".join(dict.fromkeys(encoders))  # which forward scored it (encode.encoder_name)
    result["timing"] = {**timing, "token_cache": sources}
    if opts.return_per_query:
        result["per_query"] = {
            name: {"query_ids": query_ids[name], MAIN_METRIC: per_task[name][MAIN_METRIC].tolist()} for name in per_task
        }
    return result


@dataclass
class _Encoding:
    """How evaluate_model encodes: the device, the token cache, the padded tokens per batch and the autocast."""
    device: torch.device
    cache_dir: Path
    token_budget: int | None
    amp_dtype: torch.dtype | None


def _score_task(model, name: str, task: RetrievalTask, encoding: _Encoding):
    """One task's per-query metrics: (metrics, query ids, the encoder's stats, (encode seconds, search seconds))."""
    t0 = time.perf_counter()
    qids = [q for q in task.queries if task.qrels.get(q)]
    if not qids:
        raise ValueError(f"task {name!r}: no query has a relevant document in its qrels")
    doc_ids = list(task.corpus)
    if not doc_ids:
        raise ValueError(f"task {name!r}: the corpus is empty")
    stats: dict = {}
    how = (encoding.device, encoding.cache_dir, encoding.token_budget, encoding.amp_dtype, stats)
    q_emb = encode_texts(model, [task.queries[q] for q in qids], "query", *how)
    d_emb = encode_texts(model, [task.corpus[d] for d in doc_ids], "document", *how)
    _check_finite(name, q_emb, d_emb)
    t1 = time.perf_counter()
    _, top = metrics.cosine_top_k(q_emb, d_emb, metrics.SEARCH_DEPTH, metrics.doc_id_ranks(doc_ids))
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    qrels = [_indexed_qrels(task.qrels[q], doc_index) for q in qids]
    values = metrics.per_query_metrics(top.cpu().numpy(), qrels)
    t2 = time.perf_counter()
    return values, qids, stats, (t1 - t0, t2 - t1)


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare(model, device: torch.device, max_seq_length: int | None):
    """Put the model in eval mode on device with the length cap; return a function that undoes it."""
    was_training = model.training
    old_device = _model_device(model)
    old_length = getattr(model, "max_seq_length", None)
    model.eval()
    if old_device != device:
        model.to(device)
    if max_seq_length is not None and old_length is not None and old_length > max_seq_length:
        model.max_seq_length = max_seq_length

    def restore() -> None:
        if old_length is not None and getattr(model, "max_seq_length", None) != old_length:
            model.max_seq_length = old_length
        if old_device != device:
            model.to(old_device)
        model.train(was_training)

    return restore


def _check_finite(name: str, *embeddings: torch.Tensor) -> None:
    bad = sum(int((~torch.isfinite(e).all(dim=1)).sum()) for e in embeddings)
    if bad:
        raise NonFiniteEmbeddings(f"task {name!r}: the model produced NaN or inf embeddings for {bad} texts")


def _indexed_qrels(rel: dict[str, int], doc_index: dict[str, int]) -> dict[int, float]:
    """qrels keyed by corpus position; a relevant document missing from the corpus gets a distinct
    negative key, so it still counts in Recall's denominator and the ideal DCG."""
    out: dict[int, float] = {}
    missing = -1
    for doc_id, grade in rel.items():
        if doc_id in doc_index:
            out[doc_index[doc_id]] = float(grade)
        else:
            out[missing] = float(grade)
            missing -= 1
    return out


def _summarize(per_task: dict[str, dict[str, np.ndarray]], shapes: dict, n_boot: int, seed: int) -> dict:
    main = MAIN_METRIC
    intervals = metrics.bootstrap({name: values[main] for name, values in per_task.items()}, n_boot, seed)
    tasks = {}
    for name, values in per_task.items():
        row = {metric: float(values[metric].mean()) for metric in metrics.METRICS}
        row["n_queries"], row["n_docs"] = shapes[name]
        row[f"{main}_ci"] = intervals[name]["ci"]
        row[f"{main}_se"] = intervals[name]["se"]
        tasks[name] = row
    mean = {metric: float(np.mean([row[metric] for row in tasks.values()])) for metric in metrics.METRICS}
    mean[f"{main}_ci"] = intervals["mean"]["ci"]
    mean[f"{main}_se"] = intervals["mean"]["se"]
    return {"tasks": tasks, "mean": mean}


def format_table(result: dict) -> str:
    """A plain-text table of a result, one row per task and the mean."""
    main = MAIN_METRIC
    lines = [f"{'task':<12} {main:>8} {'95% CI':>17} {'mrr@10':>8} {'R@10':>7} {'R@100':>7} {'queries':>8} {'docs':>7}"]
    for name, row in list(result["tasks"].items()) + [("mean", result["mean"])]:
        lo, hi = row[f"{main}_ci"]
        lines.append(
            f"{name:<12} {row[main]:>8.4f} {f'[{lo:.4f}, {hi:.4f}]':>17} {row['mrr@10']:>8.4f} "
            f"{row['recall@10']:>7.4f} {row['recall@100']:>7.4f} {row.get('n_queries', ''):>8} {row.get('n_docs', ''):>7}"
        )
    lines.append(f"({result['seconds']:.2f}s on {result['device']}, {result.get('dtype', '')})")
    return "\n".join(lines)
