"""`autoembed prepare`: fill the sealed scorer's caches on this machine ahead of the first trial.

`autoembed run` does this itself when they are missing (before the agent's clock starts); run it ahead to
take that minute out of the first trial, e.g. when a GPU box is set up.
"""

from __future__ import annotations

import sys

from autoembed.commands.options import add_task_and_mode


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="fill the scorer's caches on this machine (once per machine and data version)",
                       description="Build the contamination n-gram indexes and the base model's scores (with the "
                                   "token features of every eval text) that the sealed scorer caches in "
                                   "AUTOEMBED_HOME, so the first trial does not wait for them.")
    add_task_and_mode(p, "sets")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.sealed.scorer import prepare_scorer

    stages = prepare_scorer(args.task, fast=args.fast, device=args.device,
                            progress=lambda line: print(line, file=sys.stderr, flush=True))
    print("prepared: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in stages.items()))
    return 0
