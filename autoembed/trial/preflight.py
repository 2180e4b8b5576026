"""Preflight: what a trial needs, checked in seconds before a run folder exists.

    plan = preflight("claude", task="embed", hours=0.5, sandbox="auto")

An unknown agent, model or task, a bad budget (or one too short for the agent to act), GPUs this machine cannot
give, a missing or rejected API key, or no usable sandbox raises
PreflightError with one line that names the problem and its fix (the CLI prints it and exits 2). The key is
read from the HOST environment: whatever carries it into the trial afterwards, the host must hold it. Where
the provider lists its models, one such call tells a rejected key apart (HTTP 401/403); a network error there
proves nothing, so the trial goes on and the plan says the key was not checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass

from autoembed.agents.base import Agent, too_short
from autoembed.agents.registry import agent_kind, make_agent, spec_file
from autoembed.models import (CLI_AGENTS, PROVIDERS, WIRE_BASE_URL, WIRE_DEFAULT_BASE, WIRE_KEYS, ModelRef,
                              ModelRefError, key_names)
from autoembed.task.spec import TaskSpec

KEY_CHECK_TIMEOUT_S = 10.0
GPU_CHECK_TIMEOUT_S = 10.0
CUDA_TORCH_HINT = "pip install torch --index-url https://download.pytorch.org/whl/cu128"


class PreflightError(ValueError):
    """Bad input found before anything ran: one line naming the problem and the fix."""


@dataclass
class Plan:
    spec: TaskSpec
    agent: Agent
    hours: float
    sandbox: str  # the kind to ask make_sandbox for ("auto" only where a Docker engine answers)
    notices: list[str]  # one line each, for the user (sandbox fallback, key not checked)
    key_check: str | None  # "accepted", "not checked: <why>", or None when the agent needs no key


def preflight(agent: str, *, task: str = "embed", hours: float | None = None, sandbox: str = "auto",
              model: str | None = None, live_key_check: bool = True, env: dict | None = None,
              gpus: list[str] | None = None) -> Plan:
    """Check a trial's inputs and environment; raise PreflightError on the first problem."""
    from autoembed.llm.base import LLMError
    from autoembed.task.spec import load_spec

    env = os.environ if env is None else env
    try:
        spec = load_spec(task)
    except (FileNotFoundError, ValueError) as exc:
        raise PreflightError(str(exc)) from None
    hours = check_hours(spec.hours if hours is None else hours)
    try:
        agent_obj = make_agent(agent, model)
    except (ValueError, LLMError) as exc:
        raise PreflightError(str(exc)) from None
    short = too_short(f"the {agent_obj.name} agent", hours * 3600, agent_obj.min_budget_s())
    if short:
        raise PreflightError(short)
    check_gpus(gpus)
    harness_model = getattr(agent_obj, "model", model) if spec_file(agent, "harness") is not None else None
    if harness_model:
        check_harness_model(harness_model, env)
    kind, notices = resolve_sandbox(sandbox)
    check_host_settings(kind, env)
    needed = key_needed(agent, harness_model)
    key_check = None
    if needed is not None:
        provider, names = needed
        key_check = check_key(provider, names, env, live=live_key_check)
        if key_check.startswith("not checked"):
            notices.append(f"{provider} key {key_check}")
    return Plan(spec, agent_obj, hours, kind, notices, key_check)


def check_hours(hours) -> float:
    try:
        value = float(hours)
    except (TypeError, ValueError):
        raise PreflightError(f"--hours must be a number of hours, got {hours!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise PreflightError(f"--hours must be positive and finite, got {hours!r} (e.g. --hours 0.5 for 30 minutes)")
    return value


def check_gpus(gpus: list[str] | None) -> None:
    """The GPUs asked for exist here and torch can use them, checked without importing torch (seconds): nvidia-smi
    (or the device nodes) and the CUDA version torch was built with (torch/version.py, read as text)."""
    if not gpus:
        return
    asked = ",".join(gpus)
    bad = [g for g in gpus if not str(g).isdigit()]
    if bad:
        raise PreflightError(f"--gpus {asked}: GPU ids are indices such as 0 or 0,1, not {bad[0]!r}")
    smi = shutil.which("nvidia-smi")
    if smi is None and not any(os.path.exists(f"/dev/nvidia{g}") for g in gpus):
        raise PreflightError(f"--gpus {asked}: this machine shows no NVIDIA GPU (no nvidia-smi, no /dev/nvidia*): "
                             "leave --gpus out to run on the CPU, or run where CUDA is installed")
    if smi is not None:
        try:
            done = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=GPU_CHECK_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PreflightError(f"--gpus {asked}: nvidia-smi did not answer ({exc}): check the NVIDIA driver, or "
                                 "leave --gpus out to run on the CPU") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise PreflightError(f"--gpus {asked}: nvidia-smi failed ({why[-1] if why else f'exit {done.returncode}'}):"
                                 " check the NVIDIA driver, or leave --gpus out to run on the CPU")
        present = [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()]
        missing = [g for g in gpus if g not in present]
        if missing:
            have = f"GPUs {','.join(present)}" if present else "no GPU"
            raise PreflightError(f"--gpus {asked}: this machine has {have}, not {','.join(missing)}: "
                                 f"pass {'--gpus ' + present[0] if present else 'no --gpus (the CPU)'}")
    built = _torch_cuda_build()
    if built is not None and not built[1]:
        raise PreflightError(f"--gpus {asked}: torch {built[0]} here is built without CUDA, so it cannot use a GPU: "
                             f"install a CUDA build ({CUDA_TORCH_HINT}), or leave --gpus out to run on the CPU")


def _torch_cuda_build() -> tuple[str, str | None] | None:
    """(torch's version, the CUDA or ROCm version it was built with, None for a CPU-only build); None when unknown."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        text = open(os.path.join(os.path.dirname(spec.origin), "version.py"), encoding="utf-8").read()
    except OSError:
        return None
    fields = dict(re.findall(r"^(__version__|cuda|hip)\b[^=\n]*=\s*(.+)$", text, re.MULTILINE))
    value = lambda key: (fields.get(key) or "None").strip().strip("'\"")  # noqa: E731
    built = value("cuda") if value("cuda") != "None" else value("hip")
    return value("__version__"), None if built == "None" else built


def check_harness_model(model: str, env=None) -> None:
    """A harness's provider:model names a known provider (and, for scripted, a readable script) and a model the
    gateway can price (it refuses every call to an unpriced one, which would otherwise cost nothing against a cap)."""
    from autoembed.llm.base import LLMError
    from autoembed.llm.pricing import PRICE_HELP, PriceBook, prices_from_env
    from autoembed.llm.registry import get_llm, parse_model

    try:
        provider, name = parse_model(model)
    except LLMError as exc:
        raise PreflightError(str(exc)) from None
    if provider == "scripted":  # reads and parses the script: cheap, and its message names the problem
        try:
            get_llm(model)
        except LLMError as exc:
            raise PreflightError(str(exc)) from None
        return
    try:
        book = PriceBook(prices_from_env(os.environ if env is None else env))
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    if not book.known(name, "openai" if provider == "openai-responses" else provider):
        raise PreflightError(f"no known price for {model}: the gateway refuses calls it cannot count against a cap; "
                             f"{PRICE_HELP}")


def check_host_settings(sandbox_kind: str, env) -> None:
    """The host's own settings a trial reads later (user prices, the sandbox's uid), checked before a run folder
    exists."""
    from autoembed.llm.pricing import prices_from_env
    from autoembed.sandbox.identity import IdentityError, sandbox_ids

    try:
        prices_from_env(env)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    if sandbox_kind != "none":
        try:
            sandbox_ids()
        except IdentityError as exc:
            raise PreflightError(str(exc)) from None


def resolve_sandbox(kind: str) -> tuple[str, list[str]]:
    """(the kind to build, notices). auto stays auto where a Docker engine answers (an image that cannot be built
    still falls back to bwrap then); without an engine it becomes bwrap, said in one line."""
    from autoembed.sandbox.bwrap import bwrap_problem
    from autoembed.sandbox.factory import KINDS, docker_problem

    if kind not in KINDS:
        raise PreflightError(f"unknown sandbox {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "none":
        return kind, []
    if kind == "docker":
        problem = docker_problem()
        if problem:
            raise PreflightError(f"--sandbox docker: {problem}")
        return kind, []
    if kind == "bwrap":
        problem = bwrap_problem()
        if problem:
            raise PreflightError(f"--sandbox bwrap: {problem}")
        return kind, []
    docker_why = docker_problem()
    if docker_why is None:
        return "auto", []
    bwrap_why = bwrap_problem()
    if bwrap_why is not None:
        raise PreflightError(f"no sandbox is available here (docker: {docker_why}; bwrap: {bwrap_why}); install "
                             "one (.ci/sandbox.sh shows how), or pass --sandbox none to run the agent in place "
                             "without structural integrity")
    return "bwrap", [f"sandbox: bwrap, because {docker_why}"]


def key_needed(agent: str, model: str | None) -> tuple[str, tuple[str, ...]] | None:
    """(provider, the variables that may hold its key) for an agent, or None when it needs no key."""
    kind = agent_kind(agent)
    if kind in CLI_AGENTS:
        return CLI_AGENTS[kind], key_names(CLI_AGENTS[kind], cli=True)
    if kind != "harness" or not model:
        return None
    try:
        provider = ModelRef.parse(model).provider
    except ModelRefError:
        return None
    return (provider, key_names(provider)) if key_names(provider) else None


def check_key(provider: str, names: tuple[str, ...], env, *, live: bool = True) -> str:
    """'accepted' or 'not checked: <why>'; PreflightError when the key is missing or the provider rejects it."""
    present = [name for name in names if env.get(name)]
    if not present:
        if provider.startswith("openai") and env.get("OPENAI_BASE_URL"):
            return "not checked: OPENAI_BASE_URL points at a server that may need no key"
        raise PreflightError(f"no API key for {provider}: set {' or '.join(names)} in the environment")
    name = present[0]
    request = _model_list_request(provider, name, env[name], env)
    if request is None:
        return f"not checked: {name} has no cheap check"
    if not live:
        return "not checked: live check off"
    try:
        with urllib.request.urlopen(request, timeout=KEY_CHECK_TIMEOUT_S) as reply:
            reply.read(1)
        return "accepted"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise PreflightError(f"{provider} rejected {name} (HTTP {exc.code}{_error_message(exc)}): "
                                 f"set a valid key") from None
        return f"not checked: the model list answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"not checked: {request.full_url} did not answer ({getattr(exc, 'reason', exc)})"


def _model_list_request(provider: str, name: str, key: str, env) -> urllib.request.Request | None:
    wire = PROVIDERS[provider].wire if provider in PROVIDERS else None
    if wire is None or dict(WIRE_KEYS[wire]).get(name) != "api_key":  # a bearer or OAuth token: no documented cheap check
        return None
    base = (env.get(WIRE_BASE_URL[wire]) or WIRE_DEFAULT_BASE[wire]).rstrip("/")
    if wire == "anthropic":
        return urllib.request.Request(f"{base}/v1/models?limit=1",
                                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    if wire == "openai":
        return urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
    return urllib.request.Request(f"{base}/v1beta/models?pageSize=1", headers={"x-goog-api-key": key})


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f": {str(message)[:120]}" if message else ""
