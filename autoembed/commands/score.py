"""`autoembed score WORKDIR`: the sealed score of a finished workdir (dev, validation, held-out, audits) -> score.json."""

from __future__ import annotations

from autoembed.commands.options import add_task_and_mode

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score a finished workdir's final_model with the sealed scorer",
                       description="Score WORKDIR/final_model on the dev proxy, the validation tier and the held-out set with the "
                                   "harness's own evaluator, audit it (submission, contamination, lineage, "
                                   "tampering) and write score.json (and per_query.json.gz next to it).")
    p.add_argument("workdir")
    add_task_and_mode(p, "sets")
    p.add_argument("--out", default=None, help="where to write score.json (default: WORKDIR/score.json)")
    p.add_argument("--manifest", default=None, help="the seed manifest (default: the one `autoembed seed` stored)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the CIs (default: 1000)")
    p.add_argument("--json", action="store_true", help="print the whole score.json")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.sealed.scorer import ScorerError, score_workdir

    try:
        result = score_workdir(args.workdir, task=args.task, fast=args.fast, manifest=args.manifest,
                               device=args.device, out=args.out, bootstrap=args.bootstrap,
                               progress=lambda line: print(line, file=sys.stderr))
    except ScorerError as exc:
        print(f"autoembed score: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"status: {result['status']} (scored as {result['scored_as']}, {result['mode']} mode, {result['seconds']:.0f}s)")
    for reason in result["reasons"]:
        print(f"  - {reason}")
    from autoembed.task.spec import load_spec

    metric = load_spec(args.task).main_metric  # task.toml's [eval] main_metric
    for split in ("dev", "validation", "heldout"):
        row, base = result[split]["mean"], result["base"][split]["mean"]
        lo, hi = row.get(f"{metric}_ci", [row[metric]] * 2)
        print(f"{split:<10} {metric} {row[metric]:.4f} [{lo:.4f}, {hi:.4f}]   base {base[metric]:.4f}")
    return 0
