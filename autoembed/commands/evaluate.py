"""`autoembed evaluate MODEL`: the dev proxy score of a sentence-transformers model folder."""

from __future__ import annotations

from autoembed.commands.options import add_task_and_mode

import json
import sys
from pathlib import Path

# what a model folder saved by SentenceTransformer.save (or transformers' save_pretrained) holds, one at least
MODEL_MARKERS = ("modules.json", "config_sentence_transformers.json", "config.json")


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


def check_model_folder(model: str) -> None:
    """A folder that holds no model fails here, in milliseconds, before torch is imported (ValueError: exit 2)."""
    path = Path(model)
    if not path.exists():
        raise ValueError(f"{model}: no such folder; give the folder a sentence-transformers model was saved to "
                         "(e.g. final_model/)")
    if not path.is_dir():
        raise ValueError(f"{model} is a file, not a model folder; give the folder it is in")
    if not any((path / marker).is_file() for marker in MODEL_MARKERS):
        raise ValueError(f"{model} holds no model (none of {', '.join(MODEL_MARKERS)}); give the folder a "
                         "sentence-transformers model was saved to (SentenceTransformer.save), e.g. final_model/")


def _main(args) -> int:
    check_model_folder(args.model)
    from autoembed.task.evaluate import evaluate, format_table

    only = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    progress = None if args.json else (lambda line: print(line, file=sys.stderr))
    result = evaluate(args.model, task=args.task, fast=args.fast, tasks=only, device=args.device,
                      bootstrap=args.bootstrap, cache_dir=args.cache_dir, progress=progress)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
