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
