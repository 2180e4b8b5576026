"""Pick a sandbox by name: auto | docker | bwrap | none.

auto takes Docker where an engine answers and the task image exists or can be built, else bwrap;
it never falls back to none silently: if neither works it raises and names `--sandbox none` as the
explicit choice. Whoever records the trial reads the choice from sandbox.describe()["kind"].
"""

from __future__ import annotations

import dataclasses
import os
import sys

from autoembed import paths
from autoembed.sandbox.base import Sandbox, SandboxConfig, SandboxError

KINDS = ("auto", "docker", "bwrap", "none")


def make_sandbox(kind: str, config: SandboxConfig, *, task: str = paths.DEFAULT_TASK, progress=None) -> Sandbox:
    """A sandbox of that kind, not yet started. For docker without config.image, the task's image
    is built or reused first (minutes the first time on a machine, then cached by content hash)."""
    progress = progress or (lambda message: print(message, file=sys.stderr))
    if kind not in KINDS:
        raise SandboxError(f"unknown sandbox {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "none":
        from autoembed.sandbox.none import NoSandbox

        return NoSandbox(config)
    if kind == "bwrap":
        return _bwrap(config)
    if kind == "docker":
        return _docker(config, task, progress)
    reasons = []
    try:
        return _docker(config, task, progress)
    except SandboxError as exc:
        reasons.append(f"docker: {exc}")
    try:
        sandbox = _bwrap(config)
    except SandboxError as exc:
        reasons.append(f"bwrap: {exc}")
        raise SandboxError("no sandbox is available here (" + "; ".join(reasons) + "). Install one "
                           "(.ci/sandbox.sh shows how), or pass --sandbox none to run the agent in place "
                           "without structural integrity, knowing that it can then read the held-out data.") from None
    progress(f"sandbox: bwrap, because {reasons[0]}")
    return sandbox


def docker_problem() -> str | None:
    """Why no Docker engine can be used, or None if one answers."""
    try:
        import docker
    except ImportError:
        return "the docker Python package is missing: pip install docker"
    try:
        docker.from_env(timeout=10).ping()
    except Exception as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return f"no Docker engine answers at {host} ({_short_cause(exc)}); start one with `dockerd &`"
    return None


def _short_cause(exc: BaseException) -> str:
    """The root of a docker SDK error in a few words, not its nested repr."""
    text = repr(exc)
    for needle, words in (("FileNotFoundError", "no socket there"), ("ConnectionRefused", "connection refused"),
                          ("PermissionError", "permission denied"), ("Permission denied", "permission denied"),
                          ("Timeout", "timed out")):
        if needle in text:
            return words
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__


def _docker(config: SandboxConfig, task: str, progress) -> Sandbox:
    problem = docker_problem()
    if problem:
        raise SandboxError(problem)
    import docker

    from autoembed.sandbox.docker import DockerSandbox
    from autoembed.sandbox.image import ImageBuildError, ensure_task_image

    if not config.image:
        try:
            config = dataclasses.replace(config, image=ensure_task_image(task, progress=progress))
        except (ImageBuildError, FileNotFoundError, docker.errors.DockerException) as exc:
            raise SandboxError(f"the task image could not be built: {exc}") from exc
    return DockerSandbox(config)


def _bwrap(config: SandboxConfig) -> Sandbox:
    from autoembed.sandbox.bwrap import BwrapSandbox, bwrap_problem

    problem = bwrap_problem()
    if problem:
        raise SandboxError(problem)
    return BwrapSandbox(config)
