"""`autoembed compare`: pairing experiments, the grid of meta-loops meta model x task model with repeats, a
leaderboard of single-agent trials, and a report derived from the ledgers (autoembed/compare.py)."""

from __future__ import annotations


def add_parser(sub) -> None:
    from autoembed.compare import add_arguments

    p = sub.add_parser("compare", help="pairing experiments: meta model x task model loops, repeated, with a report",
                       description="Run the grid of meta-loops (every --meta with every --task model, --repeats "
                                   "times), resumable with --resume, then write report/report.md with figures: the "
                                   "improvement per pairing with CIs, same- vs cross-family pairings with a test, "
                                   "the repeats an effect size needs, and a leaderboard against the reference ladder.")
    add_arguments(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.compare import main_from_args

    return main_from_args(args)
