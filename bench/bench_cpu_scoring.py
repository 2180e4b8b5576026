"""CPU scoring: ways to encode the fast subsets faster, each against today's exact fp32 path in the same run.

    PYTHONPATH=. python bench/bench_cpu_scoring.py [--model DIR] [--tasks dev,heldout] [--methods fp32,bf16,int8]

For every method: seconds to encode and score the fast subsets (the scorer's sizes from task.toml, token ids
already cached: a warm scorer), and the largest change of any subset's nDCG@10 against fp32. The scorer may use a
method only if that change stays within 0.002 on every subset.

Methods:
- fp32:  the torch path (evaluate_model, fp32 on CPU, AUTOEMBED_OPENVINO=0): what the scorer ran before.
- bf16:  the same forward under torch.autocast(cpu, bfloat16) (AMX/AVX512-BF16 where the CPU has it).
- ov-f32 / ov-bf16: the transformer compiled by OpenVINO at f32 / bf16 inference precision (encode.openvino_forward),
  pooling in torch; the compile (seconds, once per model) is inside the timing.
- int8:  torch.ao dynamic int8 quantization of every nn.Linear (weights int8, activations quantized per batch).
- fp32-1t / bf16-1t: one intra-op thread (against the default, to see what threads buy on this machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

from autoembed.sealed import heldout as heldout_data
from autoembed.task.base_model import offline_env, resolve_base_model
from autoembed.task.data import load_retrieval_task
from autoembed.task.evaluate import evaluate_model, load_model
from autoembed.task.spec import load_spec

TOLERANCE = 0.002


def fast_subsets(spec, which: list[str]) -> dict:
    tasks = {}
    if "dev" in which:
        tasks.update({f"dev/{n}": load_retrieval_task(spec.dev_dir / n, n) for n in spec.dev_tasks})
    if "heldout" in which:
        tasks.update({f"heldout/{n}": t for n, t in heldout_data.load_heldout_tasks().items()})
    return {name: t.subset(spec.fast_queries, spec.fast_docs) for name, t in tasks.items()}


def variant(model, method: str):
    """(model to encode with, amp dtype) for a method; sets whether encode may use OpenVINO."""
    os.environ["AUTOEMBED_OPENVINO"] = "1" if method.startswith("ov-") else "0"
    if method.startswith("int8"):
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        return quantized, None
    if "bf16" in method:
        return model, torch.bfloat16
    return model, None


def run_method(model, tasks: dict, method: str, spec) -> dict:
    threads = torch.get_num_threads()
    if method.endswith("-1t"):
        torch.set_num_threads(1)
    try:
        encoder, amp = variant(model, method)
        t0 = time.perf_counter()
        result = evaluate_model(encoder, tasks, device="cpu", bootstrap=0, max_seq_length=spec.max_seq_length,
                                amp_dtype=amp)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return {"seconds": round(seconds, 2), "ndcg@10": {n: row["ndcg@10"] for n, row in result["tasks"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="embed")
    parser.add_argument("--model", default=None, help="the model to score (default: the base model)")
    parser.add_argument("--tasks", default="dev,heldout")
    parser.add_argument("--methods", default="fp32,bf16,int8")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--cached", action="store_true", help="the token cache is filled already: skip the warm-up pass")
    args = parser.parse_args()
    offline_env()
    spec = load_spec(args.task)
    path = args.model or str(resolve_base_model(spec.base_model, spec.base_model_sha256))
    model = load_model(path, "cpu")
    model.max_seq_length = min(model.max_seq_length, spec.max_seq_length)
    tasks = fast_subsets(spec, args.tasks.split(","))
    if not args.cached:  # fill the token cache, so no method pays for tokenizing
        evaluate_model(model, tasks, device="cpu", bootstrap=0, max_seq_length=spec.max_seq_length)
    rows = {}
    for method in args.methods.split(","):
        rows[method] = run_method(model, tasks, method, spec)
        print(f"{method}: {rows[method]['seconds']}s", flush=True)
    exact = rows.get("fp32")
    print(f"\n{len(tasks)} subsets of {spec.fast_queries} queries x {spec.fast_docs} docs, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<10} {'seconds':>8} {'x fp32':>7} {'max |d nDCG@10|':>16}  within {TOLERANCE}")
    for method, row in rows.items():
        drift = max(abs(row["ndcg@10"][n] - exact["ndcg@10"][n]) for n in tasks) if exact else float("nan")
        row["max_abs_change"] = drift
        speed = exact["seconds"] / row["seconds"] if exact else float("nan")
        print(f"{method:<10} {row['seconds']:>8.1f} {speed:>7.2f} {drift:>16.4f}  {'yes' if drift <= TOLERANCE else 'NO'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"tasks": list(tasks), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
