"""`autoembed evaluate MODEL`: the dev proxy score of a sentence-transformers model folder."""

from __future__ import annotations

from autoembed.commands.options import add_task_and_mode

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model folder on the dev proxy (nDCG@10 and friends)",
                       description="Score MODEL (a folder saved by SentenceTransformer.save) on the task's dev tasks.")
    p.add_argument("model", help="path to a sentence-transformers model folder")
    add_task_and_mode(p, "dev tasks")
    p.add_argument("--tasks", default=None, help="comma-separated dev tasks to score (default: all)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the CIs (default: 1000)")
    p.add_argument("--cache-dir", default=None, help="token cache folder (default: $AUTOEMBED_HOME/tokens)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.task.evaluate import evaluate, format_table

    only = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    progress = None if args.json else (lambda line: print(line, file=sys.stderr))
    result = evaluate(args.model, task=args.task, fast=args.fast, tasks=only, device=args.device,
                      bootstrap=args.bootstrap, cache_dir=args.cache_dir, progress=progress)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
