"""The one small interface every agent implements, and what the runner hands it."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autoembed.sandbox.base import Sandbox
from autoembed.task.seed import POOL_FILE
from autoembed.task.spec import TaskSpec
from autoembed.trace import TraceWriter


# the shortest budget (seconds from the seed to the deadline) in which each kind of agent can act at all: a CLI
# starts and makes a model call or two, a harness calls a real model before its finish margin, the recipe trains
MIN_BUDGET_S = {"cli": 30.0, "harness": 30.0, "recipe": 30.0}


def too_short(what: str, seconds: float, least: float, flag: str = "--hours") -> str | None:
    """None when `seconds` is enough to act, else one line naming the minimum."""
    if seconds >= least:
        return None
    return (f"{flag} {seconds / 3600:g} gives {what} {seconds:.1f} s, too short to act: it needs at least {least:.0f} s "
            f"({flag} {-(-least // 3.6) / 1000:.3f} or more)")


@dataclass
class TrialContext:
    workdir: Path  # host path of the seeded workdir
    sandbox: Sandbox  # started; tools and CLI processes run inside it
    deadline: float  # epoch seconds
    prompt: str  # instructions.md as seeded
    model: str | None  # agent-specific model name ("claude-sonnet-4-6", "anthropic:claude-sonnet-4-6", ...)
    trace: TraceWriter  # normalized events -> trace.jsonl
    raw_log: Path  # the agent's raw output (stream-json etc.)
    run_dir: Path  # traces/<run-id>/ (host side; never inside the sandbox)
    env: dict[str, str] = field(default_factory=dict)  # the gateway's base URLs + the trial's token (never a real key)
    progress: Callable[[str], None] = print
    reprompt_margin_s: float = 300.0  # re-prompt a CLI that stops early while more than this remains
    # What the trial fixed once, for every part: never probe the sandbox or guess.
    spec: TaskSpec | None = None  # task.toml, parsed once
    base_model: str | None = None  # the base model folder as the seeded task.py names it (the same path inside)
    manifest: dict | None = None  # the seed manifest: sha256 of every seeded file, the deadline
    pool: str = POOL_FILE  # the training pool, relative to the workdir


@dataclass
class AgentOutcome:
    exit_reason: str  # "finished" | "deadline" | "crashed"
    detail: str = ""  # traceback or message for crashed
    turns: int = 0
    extra: dict = field(default_factory=dict)


class Agent(abc.ABC):
    name: str = "abstract"
    kind: str = "cli"  # a key of MIN_BUDGET_S
    # which of the LLM gateway's providers this agent's environment names (base URL + token); none: no gateway
    gateway_providers: tuple[str, ...] = ("anthropic", "openai", "gemini")

    def readonly_mounts(self) -> list[Path]:
        """Host paths the sandbox must expose read-only for this agent (e.g. a CLI's node install)."""
        return []

    @abc.abstractmethod
    def run(self, ctx: TrialContext) -> AgentOutcome:
        """Act until done or the deadline; never raise for agent failures, return crashed instead."""

    def versions(self) -> dict[str, str]:
        return {}

    def min_budget_s(self) -> float:
        """The shortest budget in which this agent can act (preflight refuses less)."""
        return MIN_BUDGET_S.get(self.kind, max(MIN_BUDGET_S.values()))

    def identity(self, versions: dict) -> tuple[str, str]:
        """The agent's own (name, version) for its trajectory, from what versions() reported: a CLI's name and its
        --version, a file's name and hash; never autoembed's own version."""
        return self.name, "unknown"
