"""Calibrate the tier-gap audit and measure how well the validation tier separates two models.

    python bench/bench_tier_gap.py                        # CPU: fast subsets, short runs (~25 min on 2 cores)
    python bench/bench_tier_gap.py --full --device cuda \
        --honest-steps 300,1000 --planted-steps 100 --batch-size 256 --json tier_gap.json   # GPU, full sets

Models, each trained by the reference recipe's script (autoembed/agents/recipe_train.py, MNRL, in-batch
negatives) from the base model:
  honest:  the training pool, at every --honest-steps and --seeds;
  planted: one dev task's own (query, relevant document) pairs alone, --planted-steps, for every dev task.
For every model: the score of every tier (dev, validation, held-out), the tier-gap audit (dev gain minus
validation gain per dev task, paired per query; autoembed.sealed.audits.contamination.gap_audit) and the
paired standard error of (model - base) on the validation mean. Also the paired SE between the two honest
seeds at the largest budget (the noise of the loop's gate: two models that differ only by chance).
Prints a markdown table and writes --json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autoembed.reference import TRAIN_SCRIPT  # noqa: E402
from autoembed.sealed import heldout as sealed  # noqa: E402
from autoembed.sealed.audits import contamination  # noqa: E402
from autoembed.task import evaluate as evaluator  # noqa: E402
from autoembed.task.base_model import offline_env, resolve_base_model  # noqa: E402
from autoembed.task.data import load_retrieval_task  # noqa: E402
from autoembed.task.spec import load_spec  # noqa: E402

TIERS = ("dev", "validation", "heldout")


def load_tiers(spec, full: bool, size: tuple[int, int] | None = None) -> dict:
    tiers = {"dev": {n: load_retrieval_task(spec.dev_dir / n, n) for n in spec.dev_tasks},
             "validation": sealed.load_heldout_tasks(root=sealed.VALIDATION_DIR),
             "heldout": sealed.load_heldout_tasks()}
    if full:
        return tiers
    n_q, n_d = size or (spec.fast_queries, spec.fast_docs)
    return {tier: {n: t.subset(n_q, n_d) for n, t in tasks.items()}
            for tier, tasks in tiers.items()}


def evaluate(model_path: str, tiers: dict, args) -> dict:
    return {tier: evaluator.evaluate_model(model_path, tasks, device=args.device, bootstrap=0, return_per_query=True,
                                           max_seq_length=args.eval_seq_length)
            for tier, tasks in tiers.items() if tier in args.tiers}


def train(pairs: Path, base: str, out: Path, steps: int, seed: int, args) -> float:
    started = time.time()
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--pool", str(pairs), "--base", base, "--out", str(out),
           "--minutes", "600", "--max-steps", str(steps), "--seed", str(seed), "--batch-size", str(args.batch_size),
           "--max-seq-length", str(args.train_seq_length), "--lr", str(args.lr)]
    if args.device:
        cmd += ["--device", args.device.split(":")[0]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if not args.verbose else None)
    return time.time() - started


def dev_pairs(task, path: Path) -> Path:
    """A pool file made of one dev task's own (query, relevant document) pairs: training on dev."""
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for qid, rel in task.qrels.items():
            for doc_id in rel:
                fh.write(json.dumps({"query": task.queries[qid], "positive": task.corpus[doc_id],
                                     "domain": task.name, "group": qid}) + "\n")
    return path


def validation_mean_diff(a: dict, b: dict) -> tuple[float, float]:
    """(mean over tasks of the per-task mean paired difference a - b, its standard error)."""
    means, variances = [], []
    for task in a:
        x = np.asarray(a[task]["ndcg@10"]) - np.asarray(b[task]["ndcg@10"])
        assert list(a[task]["query_ids"]) == list(b[task]["query_ids"])
        means.append(x.mean())
        variances.append(x.var(ddof=1) / len(x))
    return float(np.mean(means)), float(np.sqrt(np.sum(variances)) / len(means))


def summarize(name: str, scores: dict, base: dict, spec, seconds: float | None) -> dict:
    gap = contamination.gap_audit(scores["dev"]["per_query"], base["dev"]["per_query"],
                                  scores["validation"]["per_query"], base["validation"]["per_query"],
                                  tuple(spec.dev_tasks))
    diff, se = validation_mean_diff(scores["validation"]["per_query"], base["validation"]["per_query"])
    return {"model": name, "train_seconds": seconds,
            "means": {t: scores[t]["mean"]["ndcg@10"] for t in scores},
            "tasks": {t: {n: r["ndcg@10"] for n, r in scores[t]["tasks"].items()} for t in scores},
            "gap": {n: {k: row.get(k) for k in ("dev_gain", "validation_gain", "gap", "gap_ci", "flagged")}
                    for n, row in gap["tasks"].items()},
            "flagged": gap["flagged"], "reasons": gap["reasons"],
            "validation_gain": diff, "validation_gain_se": se}


def table(rows: list[dict], spec) -> str:
    tasks = list(spec.dev_tasks)
    head = ("| model | dev | validation | held-out | val gain (paired SE) | "
            + " | ".join(f"gap {t} [95% CI]" for t in tasks) + " | flagged |")
    lines = [head, "|" + "---|" * (6 + len(tasks))]
    for r in rows:
        m = r["means"]
        gaps = []
        for t in tasks:
            g = r["gap"].get(t, {})
            gaps.append(f"{g['gap']:+.3f} [{g['gap_ci'][0]:+.3f}, {g['gap_ci'][1]:+.3f}]" if g.get("gap") is not None else "-")
        flagged = ", ".join(t for t in tasks if r["gap"].get(t, {}).get("flagged")) or "no"
        gain = f"{r['validation_gain']:+.4f} ({r['validation_gain_se']:.4f})" if r["validation_gain_se"] else "-"
        lines.append(f"| {r['model']} | {m['dev']:.4f} | {m['validation']:.4f} | {m.get('heldout', float('nan')):.4f} | "
                     f"{gain} | " + " | ".join(gaps) + f" | {flagged} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="full sets (default: the fast subsets of task.toml)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fast-size", default=None, metavar="Q,D", help="subset size instead of task.toml's fast sizes")
    p.add_argument("--eval-seq-length", type=int, default=256, help="tokens per text when scoring (the scorer: 256)")
    p.add_argument("--honest-steps", default="100,300", help="comma-separated step budgets on the pool")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--planted-steps", type=int, default=100, help="0: no planted runs")
    p.add_argument("--planted-tasks", default=None, help="comma-separated dev tasks (default: every dev task)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--train-seq-length", type=int, default=128)
    p.add_argument("--tiers", default="dev,validation,heldout", help="tiers to evaluate (dev and validation needed)")
    p.add_argument("--json", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.tiers = tuple(args.tiers.split(","))
    if not {"dev", "validation"} <= set(args.tiers):
        p.error("--tiers must include dev and validation (the gap compares them)")
    offline_env()
    spec = load_spec()
    base = str(resolve_base_model(spec.base_model, spec.base_model_sha256))
    tiers = load_tiers(spec, args.full, tuple(int(x) for x in args.fast_size.split(",")) if args.fast_size else None)
    sizes = {t: {n: [len(x.queries), len(x.corpus)] for n, x in tasks.items()} for t, tasks in tiers.items()}
    print(f"sizes: {json.dumps(sizes)}", flush=True)
    started = time.time()
    base_scores = evaluate(base, tiers, args)
    rows = [summarize("base", base_scores, base_scores, spec, None)]
    print(f"base evaluated in {time.time() - started:.0f}s", flush=True)
    honest_scores = {}
    with tempfile.TemporaryDirectory(prefix="tier-gap-") as tmp:
        tmp = Path(tmp)
        for steps in [int(s) for s in args.honest_steps.split(",") if s]:
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                out = tmp / f"honest-{steps}-{seed}"
                secs = train(spec.pool_path, base, out, steps, seed, args)
                scores = evaluate(str(out), tiers, args)
                honest_scores[(steps, seed)] = scores
                rows.append(summarize(f"honest: pool, {steps} steps, seed {seed}", scores, base_scores, spec, secs))
                print(json.dumps(rows[-1]), flush=True)
        planted_tasks = args.planted_tasks.split(",") if args.planted_tasks else list(spec.dev_tasks)
        if args.planted_steps <= 0:
            planted_tasks = []
        for name in planted_tasks:
            full_task = load_retrieval_task(spec.dev_dir / name, name)
            pairs = dev_pairs(full_task, tmp / f"dev-{name}.jsonl.gz")
            out = tmp / f"planted-{name}"
            secs = train(pairs, base, out, args.planted_steps, 0, args)
            scores = evaluate(str(out), tiers, args)
            rows.append(summarize(f"planted: dev {name} pairs, {args.planted_steps} steps", scores, base_scores, spec, secs))
            print(json.dumps(rows[-1]), flush=True)
    seed_pair = None
    if honest_scores:
        top = max(steps for steps, _ in honest_scores)
        pair = sorted(seed for steps, seed in honest_scores if steps == top)
        if len(pair) >= 2:
            a, b = honest_scores[(top, pair[0])], honest_scores[(top, pair[1])]
            diff, se = validation_mean_diff(a["validation"]["per_query"], b["validation"]["per_query"])
            seed_pair = {"steps": top, "seeds": pair[:2], "validation_diff": diff, "paired_se": se}
    print()
    print(table(rows, spec))
    if seed_pair:
        print(f"\nseed {seed_pair['seeds'][0]} - seed {seed_pair['seeds'][1]} at {seed_pair['steps']} steps on validation: "
              f"{seed_pair['validation_diff']:+.4f}, paired SE {seed_pair['paired_se']:.4f}")
    print(f"\n{'full' if args.full else 'fast'} sets, device {args.device}, batch {args.batch_size}, lr {args.lr}, "
          f"train seq {args.train_seq_length}, eval seq {args.eval_seq_length}, gap threshold {contamination.GAP_MIN}; {time.time() - started:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "rows": rows, "seed_pair": seed_pair,
                                               "args": vars(args) | {"tiers": list(args.tiers)},
                                               "gap_min": contamination.GAP_MIN}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
