"""autoembed: can an AI agent train a good embedding model on its own? Seed a task, run an agent in a sandbox,
score its final_model with the sealed scorer (dev proxy, held-out set, audits)."""

# Each verb lives in its own module under autoembed/commands/ and registers itself here.

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> module exposing add_parser(subparsers) that sets func=callable(args) -> int
VERBS = {
    "seed": "autoembed.commands.seed",
    "score": "autoembed.commands.score",
    "prepare": "autoembed.commands.prepare",
    "reference": "autoembed.commands.reference",
    "evaluate": "autoembed.commands.evaluate",
    "run": "autoembed.commands.run",
    "loop": "autoembed.commands.loop",
    "report": "autoembed.commands.report",
    "compare": "autoembed.commands.compare",
    "audit": "autoembed.commands.audit",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoembed", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, module_name in VERBS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from autoembed.task.base_model import offline_env

    offline_env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrialFailedToStart as exc:  # the folder says failed_to_start; bad input (2) or the machine (1)
        print(f"autoembed {args.verb}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc.__cause__, USER_ERRORS) else 1
    except USER_ERRORS as exc:  # bad input: one line that names the problem, not a traceback
        print(f"autoembed {args.verb}: error: {exc}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoembed.agents.harness import HarnessError
    from autoembed.llm.base import LLMError
    from autoembed.sandbox.base import SandboxError
    from autoembed.sandbox.identity import IdentityError
    from autoembed.sealed.errors import ScorerError
    from autoembed.editable import EditableError
    from autoembed.task.base_model import BaseModelError

    return (ValueError, FileNotFoundError, NotADirectoryError, SandboxError, BaseModelError, LLMError, HarnessError,
            ScorerError, EditableError, IdentityError)


USER_ERRORS = _user_errors()
from autoembed.trial.run import TrialFailedToStart  # noqa: E402 - after USER_ERRORS, which run's imports do not need


if __name__ == "__main__":
    sys.exit(main())
