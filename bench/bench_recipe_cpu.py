"""Does the default recipe move the model on CPU? Train with harnesses/recipe.py for each budget, score the dev
fast subsets, and give the change from the base model with its paired 95% CI (the same queries for both).

    PYTHONPATH=. python bench/bench_recipe_cpu.py --minutes 3,5,8 [--max-steps N] [-- extra recipe.py args]

A row per run: the budget, steps taken, training CPU seconds (process time of the script: load-independent,
unlike wall time on a shared machine), wall seconds, and the dev change with its CI. The load average is
printed with every row: on a shared machine wall minutes stretch with it, steps per minute shrink with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from autoembed.paths import REPO_ROOT
from autoembed.task.base_model import resolve_base_model
from autoembed.task.evaluate import evaluate
from autoembed.task.metrics import paired_bootstrap
from autoembed.task.spec import load_spec

RECIPE = REPO_ROOT / "harnesses" / "recipe.py"


def per_query(model_dir: str) -> dict[str, dict[str, float]]:
    result = evaluate(model_dir, fast=True, return_per_query=True, bootstrap=0, device="cpu")
    return {task: dict(zip(rows["query_ids"], rows["ndcg@10"])) for task, rows in result["per_query"].items()}


def change_from_base(base: dict, ours: dict) -> dict:
    order = {task: sorted(base[task]) for task in base}
    a = {task: [base[task][q] for q in order[task]] for task in base}
    b = {task: [ours[task][q] for q in order[task]] for task in base}
    paired = paired_bootstrap(a, b, n_boot=1000)
    per_task = {task: sum(b[task]) / len(b[task]) - sum(a[task]) / len(a[task]) for task in base}
    return {"change": paired["diff"], "ci": paired["ci"], "per_task": per_task}


def train(pool: Path, base: str, out: Path, minutes: float, extra: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run([sys.executable, str(RECIPE), "--pool", str(pool), "--base", base, "--out", str(out),
                           "--minutes", str(minutes), "--device", "cpu", *extra],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"error: recipe.py exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    summary = dict(line.split(": ", 1) for line in proc.stdout.split("\n---\n")[-1].splitlines() if ": " in line)
    return {"steps": int(summary.get("steps", 0)), "batch_size": summary.get("batch_size"),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "wall_s": round(time.time() - started, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", default="3,5,8", help="comma-separated recipe budgets (whole script, minutes)")
    p.add_argument("--out", default="bench/results/recipe_cpu", help="folder for models and results.jsonl")
    p.add_argument("extra", nargs="*", help="after --: more recipe.py arguments (e.g. --max-steps 60 --lr 1e-4)")
    args = p.parse_args()
    try:
        budgets = [float(m) for m in args.minutes.split(",") if m.strip()]
    except ValueError:
        p.error(f"--minutes takes numbers separated by commas, got {args.minutes!r}")
    spec = load_spec("embed")
    base_model = resolve_base_model(spec.base_model, spec.base_model_sha256)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_file = out / "base_per_query.json"
    if not base_file.is_file():
        base_file.write_text(json.dumps(per_query(str(base_model))))
    base = json.loads(base_file.read_text())
    for minutes in budgets:
        model_dir = out / f"model-{minutes:g}min"
        row = {"minutes": minutes, "extra": args.extra, "load_before": os.getloadavg()[0]}
        row.update(train(spec.pool_path, str(base_model), model_dir, minutes, args.extra))
        row.update(change_from_base(base, per_query(str(model_dir))))
        row["load_after"] = os.getloadavg()[0]
        print(json.dumps(row), flush=True)
        with open(out / "results.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
