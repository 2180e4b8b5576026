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
        print(f"autoembed score: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from pathlib import Path

    from autoembed.trial import summary
    from autoembed import textsafe

    out = Path(args.out) if args.out else Path(args.workdir) / "score.json"
    scores = summary.headline(result, summary.load_per_query(out.parent), bootstrap=args.bootstrap)
    print("\n".join(summary.score_lines(scores)))
    print(f"seconds: {result['seconds']:.0f}")
    for reason in result["reasons"]:  # findings quote the submission's file names: no control character prints
        print(f"reason: {textsafe.escape(reason)}")
    return 0 if result["status"] == "ok" else 1
