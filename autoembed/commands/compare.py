"""`autoembed compare`: pairing experiments, the grid of meta-loops meta model x task model with repeats, a
leaderboard of single-agent trials, and a report derived from the ledgers (autoembed/experiments/compare.py)."""

from __future__ import annotations

import argparse
import sys

from autoembed.commands.options import add_mode

OPTION_NAMES = ("trial_hours", "max_iterations", "baseline_runs", "max_cost", "agents", "agent_hours", "gpus", "places",
                "sandbox", "seed", "fast", "bench")


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="pairing experiments: meta model x task model loops, repeated, with a report",
                       description="Run the grid of meta-loops (every --meta with every --task model, --repeats "
                                   "times), resumable with --resume, then write report/report.md with figures: the "
                                   "improvement per pairing with CIs, same- vs cross-family pairings with a test, "
                                   "the repeats an effect size needs, and a leaderboard against the reference ladder.")
    add_arguments(p)
    p.set_defaults(func=main_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meta", type=_names, default=None, help="comma-separated meta-agents: search, or provider:model")
    p.add_argument("--task", type=_names, default=None, help="comma-separated task models (provider:model) the harness runs with")
    p.add_argument("--hours", type=float, default=None, help="each cell's loop budget in hours")
    p.add_argument("--repeats", type=int, default=None, help="repeats of every pairing (default 3; the report says how "
                                                            "many the effect sizes need; with --resume: raise it to add repeats)")
    p.add_argument("--trial-hours", type=float, default=None, help="each trial's budget (default 0.05)")
    p.add_argument("--max-iterations", type=int, default=None, help="candidates per cell's loop")
    p.add_argument("--baseline-runs", type=int, default=None, help="A/A runs of the baseline harness per cell (default 3)")
    p.add_argument("--max-cost", type=float, default=None, help="dollars per cell's loop (trials + meta-agent)")
    p.add_argument("--agents", type=_names, default=None, help="single-agent trials for the leaderboard, comma-separated: "
                                                               "claude, codex, gemini, recipe, harness:<file>@provider:model")
    p.add_argument("--agent-hours", type=float, default=None, help="their budget (default --trial-hours)")
    p.add_argument("--gpus", type=_names, default=None, help="GPU ids for the trials, e.g. 0,1 (default: CPU)")
    p.add_argument("--places", default=None, metavar="TOML",
                   help="run the trials on these places (local GPUs, Docker engines, Slurm), one per slot; see README")
    p.add_argument("--sandbox", default=None, choices=["auto", "docker", "bwrap", "none"])
    p.add_argument("--seed", type=int, default=None, help="repeat r's loops are seeded with seed + r (default 0)")
    p.add_argument("--out", default=None, help="the comparison's folder (default traces/compare/<run-id>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the comparison in DIR")
    add_mode(p, "sets")
    p.add_argument("--bench", default="embed", help="the benchmark task: a name under tasks/ or a folder (default embed)")


def _names(text: str) -> list[str]:
    """A comma-separated list as compare() takes it; compare() says what is wrong with an empty or repeated name."""
    return [part.strip() for part in text.split(",")]


def main_from_args(args) -> int:
    """The parsed command line as compare()'s keyword arguments."""
    from autoembed.experiments.compare import INTERRUPTED, compare

    if args.resume:
        given = [f for f in ("meta", "task", "hours") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--resume keeps the comparison's own grid; leave out {', '.join('--' + g for g in given)}")
        result = compare(resume=args.resume, repeats=args.repeats)
    else:
        options = {k: getattr(args, k) for k in OPTION_NAMES}
        result = compare(meta=args.meta, task=args.task, hours=args.hours, repeats=args.repeats, out=args.out,
                         **{k: v for k, v in options.items() if v is not None})
    if result.exit_code == INTERRUPTED:
        print(f"[compare] interrupted; continue with: autoembed compare --resume {result.run_dir}", file=sys.stderr)
        return INTERRUPTED
    print(f"[compare] report: {result.run_dir / 'report' / 'report.md'}", file=sys.stderr)
    return 0
