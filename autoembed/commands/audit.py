"""`autoembed audit`: run dishonest and broken agents through real trials and print how each ended."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    from autoembed.integrity.suite import GROUPS

    p = sub.add_parser("audit", help="the integrity suite: attacks, injected faults and bad input through real trials",
                       description="Run deliberately dishonest agents (escape attempts, cheating submissions), injected "
                                   "faults and bad input through real trials (real bwrap and Docker sandboxes, the "
                                   "sealed scorer) on a tiny copy of the task, and print one row per case: blocked, "
                                   "detected or survived, with the recorded reason. Exit 1 when an attack is neither "
                                   "blocked nor detected, a fault loses data, bad input is not refused, or a clean "
                                   "agent is flagged.")
    p.add_argument("--out", default=None,
                   help="scratch folder (default: AUTOEMBED_HOME/audit); audit.md and audit.json are written there, "
                        "the cases' trial folders are kept only when a case fails (or with --keep)")
    p.add_argument("--groups", default=",".join(GROUPS),
                   help=f"comma-separated case groups to run (default: all of {', '.join(GROUPS)})")
    p.add_argument("--only", default=None, help="run only the cases whose label holds this text")
    p.add_argument("--keep", action="store_true", help="keep every case's trial folder")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed import paths, textsafe
    from autoembed.integrity.outcome import table
    from autoembed.integrity.suite import GROUPS, run_suite

    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        raise ValueError(f"--groups: unknown group(s) {unknown or ['(none)']}; use some of {', '.join(GROUPS)}")
    root = Path(args.out) if args.out else paths.home() / "audit"
    cases = root / "cases"
    if cases.exists():
        raise ValueError(f"{cases} is left from an earlier audit: remove it (rm -r {cases}) or pass another --out")
    root.mkdir(parents=True, exist_ok=True)
    rows, record = run_suite(root, groups=groups, only=args.only, keep=args.keep,
                             say=lambda line: print(textsafe.escape(line), file=sys.stderr, flush=True))
    print(f"autoembed audit, {record['date']}, {record['machine']}, {record['seconds'] / 60:.1f} min")
    print(textsafe.escape(table(rows), keep_newlines=True))  # reasons quote what the audited agents wrote
    print(record["tally"])
    print(f"records: {root / 'audit.json'}" + ("" if record["exit_code"] == 0 else f"; failed cases' trials: {cases}"))
    return record["exit_code"]
