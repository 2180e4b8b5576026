"""`autoembed loop`: the meta-loop (the same code path as `python -m autoembed.loop`). argparse ends here: the
options become a typed LoopConfig (autoembed/loop/config.py), as the notebook's and compare's do."""

from __future__ import annotations

import argparse

from autoembed.commands.options import add_task_and_mode
from autoembed.loop.config import CPU_BASELINE_RUNS, DEFAULT_TASK_MODEL, META_TOKEN_ENV, TARGETS


def add_parser(sub) -> None:
    p = sub.add_parser("loop", help="improve the recipe or the harness with a meta-agent, keeping what the gate passes",
                       description="The meta-loop: propose, commit, smoke check, trial, gate, ledger; see autoembed/loop/.")
    add_arguments(p)
    p.set_defaults(func=_main)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hours", type=float, default=None,
                   help="the loop's wall-clock budget, counted once the scorer is prepared (the first run on a machine "
                        "prepares it, minutes on a CPU): it covers proposing, smoke checks, trials (seeding, training, "
                        "scoring), the gate and the held-out scoring of kept steps; no trial starts that is not "
                        "expected to end within it (default 1)")
    p.add_argument("--trial-hours", type=float, default=None, help="each trial's budget (default 0.05 = 3 min)")
    p.add_argument("--target", choices=sorted(TARGETS), default=None, help="the file to improve (default recipe)")
    p.add_argument("--meta", default=None, help="search (default: Optuna TPE over the knobs) or provider:model")
    p.add_argument("--meta-base-url", default=None,
                   help=f"send the LLM meta-agent's requests to this gateway of your own, token from ${META_TOKEN_ENV} "
                        "(default: the loop runs one, logging every request under <run>/meta/gateway/)")
    p.add_argument("--task-model", default=None, help=f"the harness's model (--target harness; default {DEFAULT_TASK_MODEL})")
    p.add_argument("--max-cost", type=float, default=None, help="stop after this many dollars (trials + meta-agent)")
    p.add_argument("--max-iterations", type=int, default=None, help="stop after this many candidates")
    p.add_argument("--gpus", default=None, help="GPU ids, one trial per GPU side by side, e.g. 0,1 (default: CPU)")
    p.add_argument("--places", default=None, metavar="TOML",
                   help="run trials on these places (local GPUs, Docker engines, Slurm), one per slot; see README")
    p.add_argument("--sandbox", default=None, choices=["auto", "docker", "bwrap", "none"])
    p.add_argument("--baseline-runs", type=int, default=None,
                   help=f"A/A runs of the baseline at the start (default 3 with --gpus, {CPU_BASELINE_RUNS} on a CPU)")
    p.add_argument("--screen", type=float, default=None, metavar="SHARE",
                   help="screen each search candidate with a short trial of this share of --trial-hours first; only "
                        "those within a margin of the incumbent's screen get a full, gated trial (default 0: off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the loop in this run folder")
    p.add_argument("--out", default=None, help="run folder (default traces/loops/<run-id>)")
    add_task_and_mode(p, "sets")


OPTION_NAMES = ("hours", "trial_hours", "target", "meta", "task_model", "max_cost", "max_iterations", "sandbox",
                "baseline_runs", "screen", "seed", "task", "fast", "meta_base_url", "places", "gpus")


def config_from_args(args):
    """The run folder and its LoopConfig: a new one, or the saved one (these options overriding) on --resume."""
    from autoembed.loop.config import new_loop, resume_loop

    options = {name: getattr(args, name) for name in OPTION_NAMES}
    return resume_loop(args.resume, options) if args.resume else new_loop(options, args.out)


def _main(args) -> int:
    from autoembed.loop.engine import run_loop

    run_dir, config = config_from_args(args)
    return run_loop(run_dir, config)
