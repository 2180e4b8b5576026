"""CPU scoring: ways to encode the fast subsets faster, each against today's exact fp32 path in the same run.

    PYTHONPATH=. python bench/bench_cpu_scoring.py [--model DIR] [--tasks dev,validation,heldout] \
        [--methods fp32,bf16,bf16-all] [--out results.json]

The scorer's fast subsets (sizes from task.toml; 3 dev, 3 validation, 4 held-out), token ids already cached (a
warm scorer). Methods run one after another on the SAME subset before the next subset starts, smallest subset
first, so a shared machine's drifting load falls on all of them alike and a stopped run still has whole rows.
Per method: wall seconds, this process's CPU seconds (less sensitive to other jobs on the machine), and the
largest change of any subset's nDCG@10 against fp32. The scorer may use a method only if that change stays
within 0.002 on every subset.

Methods:
- fp32:     the exact torch path (AUTOEMBED_CPU_PRECISION=fp32): what the scorer ran before; the reference.
- bf16:     the CPU default: every nn.Linear in bf16 from weights cast once (encode.bf16_linear_forward); the
            numbers of bf16 autocast, without its per-call casts.
- autocast: the fp32 model under torch.autocast(cpu, bfloat16).
- bf16-all: the whole model cast to bf16 (LayerNorm and the residual sums too).
- ov-f32 / ov-bf16: the transformer compiled by OpenVINO (encode.openvino_forward), pooling in torch; the
  conversion and compile (once per model) are inside the timing of the first subset.
- int8:     torch.ao dynamic int8 quantization of every nn.Linear.
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
from autoembed.task import encode
from autoembed.task.base_model import offline_env, resolve_base_model
from autoembed.task.data import load_retrieval_task
from autoembed.task.evaluate import default_cache_dir, evaluate_model, load_model
from autoembed.task.spec import load_spec

TOLERANCE = 0.002


def fast_subsets(spec, which: list[str]) -> dict:
    tasks = {}
    if "dev" in which:
        tasks.update({f"dev/{n}": load_retrieval_task(spec.dev_dir / n, n) for n in spec.dev_tasks})
    if "validation" in which:
        root = heldout_data.validation_root_for(heldout_data.HELDOUT_DIR)
        tasks.update({f"validation/{n}": t for n, t in heldout_data.load_heldout_tasks(root=root).items()
                      if n in spec.dev_tasks})
    if "heldout" in which:
        tasks.update({f"heldout/{n}": t for n, t in heldout_data.load_heldout_tasks().items()})
    return {name: t.subset(spec.fast_queries, spec.fast_docs) for name, t in tasks.items()}


def subset_tokens(model, task) -> int:
    qids = [q for q in task.queries if task.qrels.get(q)]
    return sum(encode.tokenize(model, texts, role, default_cache_dir()).n_tokens for texts, role in
               (([task.queries[q] for q in qids], "query"), (list(dict.fromkeys(task.corpus.values())), "document")))


class Method:
    """(model to encode with, amp dtype, environment) of one method; built once, reused for every subset."""

    def __init__(self, model, name: str):
        self.name, self.model, self.amp = name, model, None
        self.env = {"AUTOEMBED_OPENVINO": "1" if name.startswith("ov-") else "0"}
        if name == "int8":
            self.model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        elif name == "bf16-all":
            self.model = copy.deepcopy(model).to(torch.bfloat16)
        elif name in ("bf16", "ov-bf16"):
            self.amp = torch.bfloat16
        elif name == "autocast":
            self.env["AUTOEMBED_OPENVINO"] = "0"
        elif name not in ("fp32", "ov-f32"):
            raise SystemExit(f"error: unknown method {name!r}")

    def evaluate(self, tasks: dict, spec) -> dict:
        os.environ.update(self.env)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if self.name == "autocast" else _Nothing()
        with context:
            return evaluate_model(self.model, tasks, device="cpu", bootstrap=0, max_seq_length=spec.max_seq_length,
                                  amp_dtype=self.amp)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="embed")
    parser.add_argument("--model", default=None, help="the model to score (default: the base model)")
    parser.add_argument("--tasks", default="dev,validation,heldout")
    parser.add_argument("--only", default=None, help="comma-separated subset names (tier/task) to run")
    parser.add_argument("--methods", default="fp32,bf16")
    parser.add_argument("--out", default=None, help="write the results as JSON here (after every subset)")
    args = parser.parse_args()
    offline_env()
    spec = load_spec(args.task)
    path = args.model or str(resolve_base_model(spec.base_model, spec.base_model_sha256))
    model = load_model(path, "cpu").eval()
    model.max_seq_length = min(model.max_seq_length, spec.max_seq_length)
    tasks = fast_subsets(spec, args.tasks.split(","))
    if args.only:
        tasks = {n: t for n, t in tasks.items() if n in args.only.split(",")}
    # tokenize once here (the cache a warm scorer has), so no method pays for it; smallest subset first
    tokens = {n: subset_tokens(model, t) for n, t in tasks.items()}
    order = sorted(tasks, key=tokens.get)
    methods = [Method(model, name) for name in args.methods.split(",")]
    print(f"{len(tasks)} subsets of {spec.fast_queries} queries x {spec.fast_docs} docs, {sum(tokens.values())} "
          f"tokens; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f}", flush=True)
    rows = {m.name: {"seconds": 0.0, "cpu_seconds": 0.0, "ndcg@10": {}, "encoder": {}} for m in methods}
    for name in order:
        for method in methods:
            wall, cpu = time.perf_counter(), time.process_time()
            result = method.evaluate({name: tasks[name]}, spec)
            row = rows[method.name]
            row["seconds"] += time.perf_counter() - wall
            row["cpu_seconds"] += time.process_time() - cpu
            row["ndcg@10"][name] = result["tasks"][name]["ndcg@10"]
            row["encoder"][name] = result.get("encoder")
        line = "  ".join(f"{m}: {r['ndcg@10'][name]:.4f}" for m, r in rows.items())
        so_far = ", ".join(f"{m} {r['seconds']:.0f}" for m, r in rows.items())
        print(f"{name:<22} {tokens[name]:>7} tokens  {line}  load {os.getloadavg()[0]:.1f}  (cumulative s: {so_far})",
              flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"tokens": tokens, "rows": rows}, indent=2))
    exact = rows.get("fp32")
    print(f"\n{'method':<10} {'wall s':>8} {'x fp32':>7} {'CPU s':>8} {'x fp32':>7} {'max |d nDCG@10|':>16}  within {TOLERANCE}")
    for method, row in rows.items():
        drift = max(abs(row["ndcg@10"][n] - exact["ndcg@10"][n]) for n in row["ndcg@10"]) if exact else float("nan")
        row["max_abs_change"] = drift
        speed = exact["seconds"] / row["seconds"] if exact else float("nan")
        cpu_speed = exact["cpu_seconds"] / row["cpu_seconds"] if exact else float("nan")
        print(f"{method:<10} {row['seconds']:>8.1f} {speed:>7.2f} {row['cpu_seconds']:>8.1f} {cpu_speed:>7.2f} "
              f"{drift:>16.4f}  {'yes' if drift <= TOLERANCE else 'NO'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"tokens": tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
