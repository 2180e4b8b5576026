"""The one small interface every sandbox implements.

A sandbox exposes a single writable folder, the trial's workdir, at `workdir_inside`; everything
else is read-only or absent. It hides `autoembed/sealed/`, earlier traces and the user's home; it
has no network unless `network=True` (a CLI agent that needs its API); and it kills every process
it started when stopped or when the deadline passes.
"""

from __future__ import annotations

import abc
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SandboxConfig:
    workdir: Path  # host folder, mounted writable
    deadline: float  # epoch seconds; nothing started inside outlives it
    network: bool = False
    gpus: list[str] | None = None  # GPU ids ("0", "1"); None = no GPU passed through
    env: dict[str, str] = field(default_factory=dict)  # extra environment inside
    hidden: list[Path] = field(default_factory=list)  # host paths made invisible (in addition to the defaults)
    readonly_extra: list[Path] = field(default_factory=list)  # host paths bound read-only (e.g. a CLI's install)
    memory_gb: float | None = None
    pids_limit: int | None = 4096
    image: str | None = None  # docker only


@dataclass
class ExecResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False
    duration_s: float = 0.0


class SandboxError(RuntimeError):
    pass


class Sandbox(abc.ABC):
    kind: str = "abstract"

    def __init__(self, config: SandboxConfig):
        self.config = config

    @property
    @abc.abstractmethod
    def workdir_inside(self) -> str:
        """Path of the workdir as processes inside the sandbox see it."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def exec(self, command: str | list[str], *, timeout: float | None = None, env: dict[str, str] | None = None,
             cwd: str | None = None) -> ExecResult:
        """Run a command inside (a string runs with bash -lc) and wait; the timeout is capped by the deadline."""

    @abc.abstractmethod
    def spawn(self, argv: list[str], *, stdout, stderr, env: dict[str, str] | None = None,
              cwd: str | None = None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        """Start a long-running process inside (a CLI agent); the caller waits on the returned Popen."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Kill everything started inside; idempotent."""

    def seconds_left(self) -> float:
        return self.config.deadline - time.time()

    def exec_plan(self, command: str | list[str], timeout: float | None) -> tuple[list[str], float]:
        """argv for a command (a string runs with bash -lc) and its timeout capped by the deadline (<= 0: passed)."""
        argv = ["bash", "-lc", command] if isinstance(command, str) else list(command)
        limit = self.seconds_left()
        return argv, (limit if timeout is None else min(timeout, limit))

    def describe(self) -> dict:
        """What the trial record says about where the agent ran."""
        return {"kind": self.kind, "network": self.config.network, "gpus": self.config.gpus}

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
