"""Runs a single-file harness (harnesses/*.py) as the task agent.

The harness's orchestration runs here on the host; its tools execute inside the trial's sandbox through
HarnessEnv, so API keys never enter the sandbox. Tracing is done by HarnessEnv, not by the editable
code, so every trial's trace shows its model calls and tool calls whatever the meta-agent edits.
The fixed adapter below the harness file's banner is checked by hash when the file is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autoembed.agents.base import Agent, AgentOutcome, TrialContext
from autoembed.llm.base import LLM, Message, Response, ToolCall, ToolSpec
from autoembed.llm.registry import get_llm
from autoembed.trace import Event

BANNER = "# ===== FIXED ADAPTER: the meta-agent must not edit below this line ====="
# sha256 of everything below the banner in harnesses/baseline.py; change both together, on purpose
FIXED_ADAPTER_SHA256 = "f49530e4e513fb69f41969f78df0e881cb2f12fa3e5ea2b1c58fab9348a26bd8"
OUTPUT_DIR = ".outputs"  # full tool outputs, readable by the agent, when the shown output is truncated
GRACE_S = 5.0


class HarnessError(RuntimeError):
    pass


class HarnessStopped(BaseException):
    """Raised inside the harness thread once the trial is over (deadline, Ctrl-C): a BaseException, so
    the editable code's `except Exception` cannot swallow it and keep making paid model calls."""


@dataclass
class Tool:
    """A tool the harness offers the model: its spec and the function that runs it (returns text)."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., str]

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)


def fixed_adapter(source: str) -> str:
    if BANNER not in source:
        raise HarnessError(f"the harness has no fixed-adapter banner line ({BANNER!r}); restore it from harnesses/baseline.py")
    return source.split(BANNER, 1)[1]


def adapter_hash(source: str) -> str:
    return hashlib.sha256(fixed_adapter(source).encode()).hexdigest()


def load_harness(path: Path):
    """Import a harness file after checking its fixed adapter is byte-identical to the baseline's."""
    source = Path(path).read_text()
    if adapter_hash(source) != FIXED_ADAPTER_SHA256:
        raise HarnessError(f"{path}: the fixed adapter (below the banner) was edited; only the part above it may change")
    spec = importlib.util.spec_from_file_location(f"autoembed_harness_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("harness_main", "MODEL"):
        if not hasattr(module, name):
            raise HarnessError(f"{path}: missing {name}")
    return module


class HarnessEnv:
    """What a harness receives: the sandbox (as tools), the deadline, the LLM and the trace."""

    Tool = Tool

    def __init__(self, ctx: TrialContext, model: str):
        self.ctx = ctx
        self.model = model
        self.workdir = ctx.sandbox.workdir_inside
        self.deadline = ctx.deadline
        self.prompt = ctx.prompt
        self.stopped = threading.Event()
        self._outputs = 0

    def _check_running(self) -> None:
        if self.stopped.is_set():
            raise HarnessStopped("the trial is over")

    def _raw(self, record: dict) -> None:
        """The agent's raw log (agent.log): every model response and tool output, one JSON line each."""
        record = {"ts": time.time(), **record}
        with open(self.ctx.raw_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")

    # -- time ---------------------------------------------------------------------------------
    def seconds_left(self) -> float:
        return self.ctx.deadline - time.time()

    # -- model --------------------------------------------------------------------------------
    def llm(self, model: str | None = None) -> LLM:
        return get_llm(model or self.model)

    def complete(self, llm: LLM, messages: list[Message], *, system: str | None, tools: list[Tool],
                 max_tokens: int = 4096) -> Response:
        self._check_running()
        response = llm.complete(messages, system=system, tools=[t.spec for t in tools], max_tokens=max_tokens)
        self._check_running()
        self._raw({"type": "response", "model": response.model, "text": response.text, "stop_reason": response.stop_reason,
                   "tool_calls": [vars(c) for c in response.tool_calls], "usage": vars(response.usage)})
        if response.text:
            self.ctx.trace.emit(Event("assistant", text=response.text))
        for call in response.tool_calls:
            self.ctx.trace.emit(Event("tool_call", tool=call.name, call_id=call.id, args=call.arguments))
        self.ctx.trace.emit(Event("usage", usage=response.usage))
        return response

    def run_tool(self, tools: list[Tool], call: ToolCall) -> str:
        by_name = {t.name: t for t in tools}
        tool = by_name.get(call.name)
        try:
            if tool is None:
                raise HarnessError(f"unknown tool {call.name!r}; available: {sorted(by_name)}")
            output, error = tool.fn(**call.arguments), False
        except Exception as exc:  # a tool failure is the model's to see, not a crash
            output, error = f"error: {type(exc).__name__}: {exc}", True
        self._raw({"type": "tool_result", "tool": call.name, "call_id": call.id, "is_error": error, "output": output})
        self.ctx.trace.emit(Event("tool_result", tool=call.name, call_id=call.id, text=output, is_error=error))
        if call.name == "bash":
            self.ctx.progress(f"harness bash: {str(call.arguments.get('command'))[:120]}")
        return output

    # -- tools' primitives (inside the sandbox / the workdir) ------------------------------------
    def bash(self, command: str, timeout: float = 600.0, limit: int = 10_000) -> str:
        self._check_running()
        result = self.ctx.sandbox.exec(command, timeout=timeout, cwd=self.workdir)
        text = result.stdout + (("\n[stderr]\n" + result.stderr) if result.stderr.strip() else "")
        status = "timed out" if result.timed_out else f"exit {result.returncode}"
        return f"[{status}, {result.duration_s:.1f}s]\n" + self.truncate(text, limit)

    def truncate(self, text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        self._outputs += 1
        rel = f"{OUTPUT_DIR}/output-{self._outputs:04d}.txt"
        full = self.host_path(rel)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
        head, tail = text[: limit // 2], text[-limit // 2:]
        return f"{head}\n… [{len(text) - limit} chars cut; full output in {rel}] …\n{tail}"

    def host_path(self, path: str) -> Path:
        """A path the model gave (relative to the workdir, or absolute inside the sandbox) -> the host path,
        refusing anything that resolves outside the workdir (symlinks included)."""
        root = self.ctx.workdir.resolve()
        inside = Path(path)
        if inside.is_absolute():
            try:
                inside = inside.relative_to(self.workdir)
            except ValueError:
                raise HarnessError(f"{path} is outside the workdir {self.workdir}") from None
        target = (root / inside).resolve()
        if target != root and root not in target.parents:
            raise HarnessError(f"{path} resolves outside the workdir")
        return target

    def read_file(self, path: str, limit: int = 20_000) -> str:
        return self.truncate(self.host_path(path).read_text(errors="replace"), limit)

    def write_file(self, path: str, content: str) -> str:
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        return f"wrote {len(content)} chars to {path}"


class HarnessAgent(Agent):
    name = "harness"
    needs_network = False  # the orchestration runs on the host; the sandbox needs no API

    def __init__(self, path: Path, model: str | None = None):
        self.path = Path(path)
        self.module = load_harness(self.path)
        self.model = model or self.module.MODEL

    def versions(self) -> dict[str, str]:
        return {"harness": str(self.path), "harness_sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
                "model": self.model}

    def run(self, ctx: TrialContext) -> AgentOutcome:
        env = HarnessEnv(ctx, self.model)
        box: dict[str, Any] = {}

        def target():
            try:
                box["result"] = self.module.harness_main(env)
            except HarnessStopped:
                box["stopped"] = True
            except BaseException:
                box["error"] = traceback.format_exc()

        thread = threading.Thread(target=target, name="harness", daemon=True)
        thread.start()
        try:
            thread.join(max(0.0, ctx.deadline - time.time()) + GRACE_S)
        finally:  # deadline or Ctrl-C: the harness makes no further model or tool call
            env.stopped.set()
        if thread.is_alive():  # hung or overran: record where it was; the sandbox stop ends its tools
            frame = sys._current_frames().get(thread.ident)
            stack = "".join(traceback.format_stack(frame)) if frame else ""
            ctx.trace.emit(Event("error", text=f"harness still running at the deadline:\n{stack}"))
            return AgentOutcome("deadline", f"harness overran the deadline; stack:\n{stack}")
        if "error" in box:
            ctx.trace.emit(Event("error", text=box["error"]))
            return AgentOutcome("crashed", box["error"])
        turns = box.get("result") if isinstance(box.get("result"), int) else 0
        return AgentOutcome("finished", turns=turns)
