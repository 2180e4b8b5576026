"""`autoembed loop`: the meta-loop (the same code path as `python -m autoembed.loop`)."""

from __future__ import annotations


def add_parser(sub) -> None:
    from autoembed.loop import add_arguments

    p = sub.add_parser("loop", help="improve the recipe or the harness with a meta-agent, keeping what the gate passes",
                       description="The meta-loop: propose, commit, smoke check, trial, gate, ledger; see autoembed/loop.py.")
    add_arguments(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.loop import main_from_args

    return main_from_args(args)
