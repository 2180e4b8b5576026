"""What a harness file runs on INSIDE the sandbox: the `env` its harness_main(env) receives.

The host (agents/harness.py) starts `python <copy of the harness file>` inside the trial's sandbox; the
file's fixed adapter calls main() here. Everything acts where the process runs: bash runs here, the file
tools open files here, the model is called through autoembed.llm with the environment the host passed
(the gateway's base URLs and a per-trial token). This module imports only the standard library,
autoembed.llm and autoembed.trace, never anything sealed.

The host learns what happened from one channel, the process's original stdout, one JSON object a line:
{"trace": <Event fields>}, {"raw": <agent.log record>} or {"result": {"turns": n}}. Whatever the
editable code prints goes to stderr (fd 1 is pointed there at start), so it cannot forge events by
accident; what it forges on purpose is its own record, and the gateway's log stays authoritative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from autoembed.llm.base import LLM, Message, Response, ToolCall, ToolSpec
from autoembed.llm.registry import get_llm
from autoembed.sandbox.procs import GroupPopen, communicate_or_kill
from autoembed.trace import Event

TRIAL_VAR = "AUTOEMBED_HARNESS_TRIAL"  # JSON: prompt, model, deadline, workdir, secret names
OUTPUT_DIR = ".outputs"  # full tool outputs, readable by the agent, when the shown output is truncated
STOPPED_EXIT = 3  # the runtime stopped the harness at the deadline
STACK_DUMP_LEAD_S = 2.0  # dump every thread's stack this long before the deadline (kept for a hung harness)
FINISH_MARGIN_SHARE, MIN_FINISH_MARGIN_S = 0.1, 5.0  # a harness's FINISH_MARGIN_S: at most this share of its budget


def finish_margin_s(declared: float, budget_s: float) -> float:
    """The finish margin a harness gets: what it declares, at most a tenth of its budget (and not under 5 s unless it
    declares less): 120 s of an hour's trial, 10.8 s of a 108 s one, where a fixed 120 s would leave no turn."""
    return min(float(declared), max(MIN_FINISH_MARGIN_S, FINISH_MARGIN_SHARE * max(0.0, budget_s)))


def scale_finish_margin(harness_main: Callable, budget_s: float) -> None:
    """The harness file's FINISH_MARGIN_S (its editable part reads it as a global), scaled to the budget."""
    names = getattr(harness_main, "__globals__", {})
    declared = names.get("FINISH_MARGIN_S")
    if isinstance(declared, (int, float)) and not isinstance(declared, bool):
        names["FINISH_MARGIN_S"] = finish_margin_s(declared, budget_s)


class HarnessError(RuntimeError):
    pass


class HarnessStopped(BaseException):
    """Raised once the deadline has passed: a BaseException, so the editable code's `except Exception`
    cannot swallow it and keep making paid model calls."""


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


class HarnessEnv:
    """What a harness receives: tools that act here, the deadline, the LLM, and a trace that goes to the host."""

    Tool = Tool

    def __init__(self, trial: dict, channel):
        self.prompt: str = trial["prompt"]
        self.model: str = trial["model"]
        self.deadline: float = float(trial["deadline"])
        self.workdir: str = trial["workdir"]
        self._tool_env = {k: v for k, v in os.environ.items() if k not in set(trial.get("secret_names", []))}
        self._channel = channel
        self._outputs = 0

    # -- the channel to the host ----------------------------------------------------------------
    def _send(self, record: dict) -> None:
        self._channel.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        self._channel.flush()

    def _trace(self, event: Event) -> None:
        self._send({"trace": {k: v for k, v in asdict(event).items() if v is not None}})

    def _raw(self, record: dict) -> None:
        self._send({"raw": {"ts": time.time(), **record}})

    def _check_running(self) -> None:
        if time.time() >= self.deadline:
            raise HarnessStopped("the trial is over")

    # -- time ---------------------------------------------------------------------------------
    def seconds_left(self) -> float:
        return self.deadline - time.time()

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
            self._trace(Event("assistant", text=response.text))
        for call in response.tool_calls:
            self._trace(Event("tool_call", tool=call.name, call_id=call.id, args=call.arguments))
        self._trace(Event("usage", usage=response.usage))
        return response

    def run_tool(self, tools: list[Tool], call: ToolCall) -> str:
        self._check_running()  # every tool, whatever the editable code offers, stops at the deadline
        by_name = {t.name: t for t in tools}
        tool = by_name.get(call.name)
        try:
            if tool is None:
                raise HarnessError(f"unknown tool {call.name!r}; available: {sorted(by_name)}")
            output, error = tool.fn(**call.arguments), False
        except Exception as exc:  # a tool failure is the model's to see, not a crash
            output, error = f"error: {type(exc).__name__}: {exc}", True
        self._check_running()
        self._raw({"type": "tool_result", "tool": call.name, "call_id": call.id, "is_error": error, "output": output})
        self._trace(Event("tool_result", tool=call.name, call_id=call.id, text=output, is_error=error))
        return output

    # -- tools' primitives, acting here, inside the sandbox --------------------------------------
    def bash(self, command: str, timeout: float = 600.0, limit: int = 10_000) -> str:
        self._check_running()
        timeout = max(0.001, min(float(timeout), self.seconds_left()))
        start = time.time()
        proc = GroupPopen(["bash", "-lc", command], cwd=self.workdir, env=self._tool_env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                          start_new_session=True)
        out, err, timed_out = communicate_or_kill(proc, timeout)
        text = out + (("\n[stderr]\n" + err) if err.strip() else "")
        status = "timed out" if timed_out else f"exit {proc.returncode}"
        return f"[{status}, {time.time() - start:.1f}s]\n" + self.truncate(text, limit)

    def truncate(self, text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        self._outputs += 1
        rel = f"{OUTPUT_DIR}/output-{self._outputs:04d}.txt"
        full = self.path(rel)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
        head, tail = text[: limit // 2], text[-limit // 2:]
        return f"{head}\n… [{len(text) - limit} chars cut; full output in {rel}] …\n{tail}"

    def path(self, path: str) -> Path:
        """A path the model gave: relative to the workdir, or absolute (the sandbox decides what is there)."""
        return Path(self.workdir, path)

    def read_file(self, path: str, limit: int = 20_000) -> str:
        self._check_running()
        return self.truncate(self.path(path).read_text(errors="replace"), limit)

    def write_file(self, path: str, content: str) -> str:
        self._check_running()
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        return f"wrote {len(content)} chars to {path}"


def _dump_stacks() -> None:
    """Every thread's stack to stderr. Not faulthandler.dump_traceback_later: its watchdog reads the frames of
    running threads without the GIL, and a harness in a tight loop segfaulted under load (exit -11)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = ["stacks shortly before the deadline:"]
    for ident, frame in sys._current_frames().items():
        if ident != threading.get_ident():
            parts.append(f"Thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)))
    print("\n".join(parts), file=sys.stderr, flush=True)


def main(harness_main: Callable[[HarnessEnv], int]) -> int:
    """Run harness_main(env) for the trial the host described in TRIAL_VAR; the exit status says how it ended."""
    raw = os.environ.pop(TRIAL_VAR, None)
    if raw is None:
        print(f"this harness runs inside a trial: `autoembed run harness:{sys.argv[0]}` (no {TRIAL_VAR} here)",
              file=sys.stderr)
        return 2
    trial = json.loads(raw)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # print() in the editable part lands in the log, not in the host's channel
    env = HarnessEnv(trial, channel)
    scale_finish_margin(harness_main, env.seconds_left())
    # A harness that hangs past the deadline is killed by the sandbox; this leaves its stacks in the log first.
    stack_dump = threading.Timer(max(0.1, env.seconds_left() - STACK_DUMP_LEAD_S), _dump_stacks)
    stack_dump.daemon = True
    stack_dump.start()
    try:
        turns = harness_main(env)
    except HarnessStopped:
        env._trace(Event("error", text="the harness was stopped at the deadline"))
        return STOPPED_EXIT
    except BaseException:  # noqa: BLE001 - a crash is the record's to show, with its traceback
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        env._trace(Event("error", text=text))
        return 1
    finally:
        stack_dump.cancel()
    env._send({"result": {"turns": turns if isinstance(turns, int) else 0}})
    return 0
