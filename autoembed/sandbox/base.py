"""The one small interface every sandbox implements.

A sandbox exposes a single writable folder, the trial's workdir, at `workdir_inside`; everything
else is read-only or absent. It hides `autoembed/sealed/`, earlier traces and the user's home; it
has no network at all, only the trial's LLM gateway: the folder of the gateway's socket is mounted at
/gateway and a forwarder inside listens on 127.0.0.1:GATEWAY_PORT (`gateway_url`); and it kills every
process it started when stopped or when the deadline passes.
"""

from __future__ import annotations

import abc
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoembed.sandbox import forwarder, host_fit, identity
from autoembed.sandbox.procs import read_until

GATEWAY_DIR_INSIDE = "/gateway"  # where bwrap and docker mount the host folder holding the gateway's socket
GATEWAY_PORT = 8787  # the forwarder's port on the sandbox's own loopback
FORWARDER_SOURCE = Path(forwarder.__file__).read_text()
FORWARDER_START_S = 20.0


@dataclass
class SandboxConfig:
    workdir: Path  # host folder, mounted writable
    deadline: float  # epoch seconds; nothing started inside outlives it
    gateway_socket: Path | None = None  # host path of the LLM gateway's Unix socket; None: no way out at all
    gpus: list[str] | None = None  # GPU ids ("0", "1"); None = no GPU passed through
    env: dict[str, str] = field(default_factory=dict)  # extra environment inside
    hidden: list[Path] = field(default_factory=list)  # host paths made invisible (in addition to the defaults)
    readonly_extra: list[Path] = field(default_factory=list)  # host paths bound read-only (e.g. a CLI's install)
    memory_gb: float | None = None
    pids_limit: int | None = 4096
    cpus: float | None = None  # a CPU quota in cores (cgroup cpu.max / cpu.cfs_quota_us, Docker nano_cpus)
    tmpfs_gb: dict | None = None  # size of each scratch tmpfs inside ({"/tmp": GiB, ...}); None: the engine's default
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
        self.config = host_fit.with_host_defaults(config) if self.kind != "none" else config

    @property
    @abc.abstractmethod
    def workdir_inside(self) -> str:
        """Path of the workdir as processes inside the sandbox see it."""

    @property
    def python(self) -> str:
        """The interpreter inside, with torch and sentence-transformers: this one, where the sandbox shows
        the host's own install (bwrap, none); the image's own in Docker."""
        return sys.executable

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

    # -- the one way out: the LLM gateway ----------------------------------------------------------
    gateway_port: int | None = None  # set once the forwarder listens

    @property
    def gateway_url(self) -> str | None:
        """The gateway as processes inside reach it (base URLs for the agents' SDKs hang below it)."""
        return f"http://127.0.0.1:{self.gateway_port}" if self.gateway_port else None

    def gateway_socket_inside(self) -> str:
        return f"{GATEWAY_DIR_INSIDE}/{Path(self.config.gateway_socket).name}"

    def connect_gateway(self) -> None:
        """For an engine with its own network namespace, at the end of start(): the forwarder on GATEWAY_PORT
        when the config names a gateway; a sandbox whose forwarder fails is stopped, not left half open."""
        if not self.config.gateway_socket:
            return
        try:
            try:  # the agent is not root: the socket is made connectable by its uid, and by no other user
                identity.grant_socket(self.config.gateway_socket, *self.ids())
            except (OSError, identity.IdentityError) as exc:
                raise SandboxError(f"cannot hand the gateway's socket to the sandbox uid: {exc}") from None
            self.start_forwarder()
        except SandboxError:
            self.stop()
            raise

    def start_forwarder(self, port: int = GATEWAY_PORT) -> None:
        """Start the forwarder inside (its own network namespace): 127.0.0.1:port -> the gateway's socket;
        waits until it listens (port 0: a free one, for a sandbox that shares the host's network)."""
        argv = [self.python, "-I", "-S", "-c", FORWARDER_SOURCE, "127.0.0.1", str(port), self.gateway_socket_inside()]
        proc = self.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = read_until(proc.stdout.fileno(), lambda b: b"\n" in b, FORWARDER_START_S).decode("utf-8", "replace")
        if not line.startswith("listening "):
            proc.kill()
            raise SandboxError(f"the gateway forwarder did not start inside the {self.kind} sandbox: "
                               f"{line.strip() or 'no output'}")
        self.gateway_port = int(line.split()[1])

    def ids(self) -> tuple[int, int]:
        """(uid, gid) of every process the agent runs inside (identity.sandbox_ids for the engines)."""
        return os.getuid(), os.getgid()

    def seconds_left(self) -> float:
        return self.config.deadline - time.time()

    def exec_plan(self, command: str | list[str], timeout: float | None) -> tuple[list[str], float]:
        """argv for a command (a string runs with bash -lc) and its timeout capped by the deadline (<= 0: passed)."""
        argv = ["bash", "-lc", command] if isinstance(command, str) else list(command)
        limit = self.seconds_left()
        return argv, (limit if timeout is None else min(timeout, limit))

    def describe(self) -> dict:
        """What the trial record says about where the agent ran."""
        uid, gid = self.ids()
        return {"kind": self.kind, "network": "none; the LLM gateway only" if self.config.gateway_socket else "none",
                "gateway_url": self.gateway_url, "gpus": self.config.gpus, "uid": uid, "gid": gid}

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

