"""`autoembed report RUN`: a loop's ledger, progress.png and a markdown summary."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="print a loop's ledger and write progress.png and summary.md",
                       description="Report on a loop run folder (traces/loops/<run-id>).")
    p.add_argument("run", help="the loop's run folder")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.loop.report import report

    report(args.run)
    return 0
