"""`autoembed reference`: the reference ladder (base model, BM25, reference recipe, optionally mpnet) on
dev, validation and held-out; prints a markdown table and writes the full results as JSON."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("reference", help="score the reference ladder (base, BM25, recipe, mpnet) on dev, validation and held-out",
                       description=__doc__)
    p.add_argument("--task", default="embed", help="task name or folder (default: embed)")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget of the reference recipe (default 4)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fast", dest="fast", action="store_const", const=True, default=None,
                      help="score the documented fast subsets (default on CPU)")
    size.add_argument("--full", dest="fast", action="store_const", const=False, help="score the full sets (default on GPU)")
    p.add_argument("--fast-size", type=_pair, default=None, metavar="Q,D",
                   help="with --fast: Q queries and D documents per task instead of task.toml's sizes")
    p.add_argument("--models", type=_names, default=None, metavar="LIST",
                   help="comma-separated rungs out of base,bm25,recipe,mpnet (default: base,bm25,recipe, "
                        "plus mpnet when its extra is installed)")
    p.add_argument("--splits", type=_names, default=("dev", "validation", "heldout"), metavar="LIST",
                   help="dev,validation,heldout (default all three)")
    p.add_argument("--out", default=None, help="JSON file to write (default traces/reference/<time>.json)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="the recipe's batch size (default 256 on GPU, 16 on CPU)")
    p.add_argument("--max-steps", type=int, default=None, help="stop the recipe after this many steps")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the CIs (default 1000)")
    p.set_defaults(func=main)


def _pair(text: str) -> tuple[int, int]:
    try:
        q, d = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Q,D (two integers, e.g. 20,200), got {text!r}") from None
    if q <= 0 or d <= 0:
        raise argparse.ArgumentTypeError(f"Q and D must be positive, got {text!r}")
    return q, d


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return names


def main(args) -> int:
    from pathlib import Path

    from autoembed.reference import ReferenceError, run_reference

    if args.fast_size and args.fast is False:
        print("autoembed reference: error: --fast-size only applies with --fast", file=sys.stderr)
        return 2
    try:
        result = run_reference(args.task, minutes=args.minutes, fast=args.fast, rungs=args.models,
                               out=Path(args.out) if args.out else None, device=args.device,
                               fast_size=args.fast_size, batch_size=args.batch_size, max_steps=args.max_steps,
                               bootstrap=args.bootstrap, splits=args.splits)
    except ReferenceError as exc:
        print(f"autoembed reference: error: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    return 0
