"""`autoembed run AGENT`: one trial of an agent on the task, recorded under traces/<run-id>/."""

from __future__ import annotations

from autoembed.commands.options import add_task_and_mode


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run one trial: seed, sandboxed agent, sealed score, traces",
                       description="Run AGENT (recipe | claude | codex | gemini | harness:<file>) on the task. Exit status: "
                                   "0 the trial ran and scored clean; 1 it ran but crashed, timed out, was "
                                   "interrupted or scored broken or flagged (the summary says why); 2 bad input, "
                                   "found before anything ran.")
    p.add_argument("agent")
    add_task_and_mode(p, "sets")
    p.add_argument("--hours", type=float, default=None,
                   help=f"the agent's wall-clock budget in hours (default: the task's budget in its task.toml, "
                        f"{_default_hours()})")
    p.add_argument("--sandbox", default="auto", choices=["auto", "docker", "bwrap", "none"],
                   help="auto = docker where an engine answers, else bwrap; none must be asked for")
    p.add_argument("--model", default=None,
                   help="the agent's model (harness: provider:model, e.g. anthropic:claude-sonnet-4-6)")
    p.add_argument("--gpus", default=None, help="GPU ids for the agent, e.g. 0 or 0,1 (default: none)")
    p.add_argument("--out", default=None, help="run folder (default: traces/<run-id>)")
    p.add_argument("--max-usd", type=float, default=None,
                   help="the trial's LLM spending cap in estimated dollars (default: task.toml [budget] usd)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="the trial's cap on all tokens its model calls report (default: task.toml [budget] tokens)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.trial.run import run

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    result = run(args.agent, task=args.task, hours=args.hours, sandbox=args.sandbox, model=args.model, gpus=gpus,
                 out=args.out, fast=args.fast, max_usd=args.max_usd, max_tokens=args.max_tokens)
    return result.exit_code


def _default_hours() -> str:
    from autoembed.task.spec import load_spec

    try:
        return f"{load_spec('embed').hours:g} h for embed"
    except (OSError, ValueError):
        return "see tasks/<name>/task.toml"
