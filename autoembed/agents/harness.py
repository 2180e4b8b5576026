"""Runs a single-file harness (harnesses/*.py) as the task agent: a process inside the trial's sandbox.

The host never imports the harness file. It checks the fixed adapter below the banner by hash, reads the
default MODEL as a literal (no code runs), stages a copy of the file (and a scripted model's script) in a
folder the sandbox mounts read-only, and runs `python <copy>` inside the sandbox with only the trial's
environment (ctx.env: the gateway's base URLs and a per-trial token). The process reports its model and tool
events on its stdout (harness_runtime.py); the host turns them into trace.jsonl and agent.log, and records a
crash, a hang or an overrun with the process's output.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import get_args

from autoembed import bounded, editable, paths
from autoembed.editable import BANNER, adapter_hash  # noqa: F401 - the names tests and the loop use
from autoembed.agents.base import Agent, AgentOutcome, TrialContext
from autoembed.agents.harness_runtime import STOPPED_EXIT, TRIAL_VAR, HarnessError
from autoembed.models import ModelRef, ModelRefError
from autoembed.trace import Event, Kind, Usage

# sha256 of everything below the banner in harnesses/baseline.py; change both together, on purpose
FIXED_ADAPTER_SHA256 = "f0e4579e4368ae8d26682a37d2a8991b570c1d99472b575e61e08185981ac24d"
GRACE_S = 5.0  # after the deadline, how long the host waits for the process before it is killed
OUTPUT_TAIL_CHARS = 6000  # of the process's own output, kept in the outcome of a crash or an overrun
MAX_TRACE_BYTES = 200 * 2**20  # events past this are dropped (with one error event): the host's disk is not the agent's
MAX_EVENT_LINE = 4 * 2**20  # one event line; a longer one is read a chunk at a time, thrown away and recorded as cut
EVENT_FIELDS = {f.name for f in fields(Event)} - {"source", "ts"}


def check_harness(path: Path) -> str:
    """The harness file's source after checking its fixed adapter is byte-identical to the baseline's."""
    source = Path(path).read_text()
    try:
        editable.check_adapter(source, FIXED_ADAPTER_SHA256, str(path))
    except editable.EditableError as exc:
        raise HarnessError(str(exc)) from None
    return source


def literal_constant(source: str, name: str):
    """The last top-level `NAME = <literal>`, read without running the file; None if absent or not a literal."""
    value = None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
    return value


def harness_model(model: str | None, default, path: Path) -> ModelRef:
    """The harness's model, parsed: --model, else the file's MODEL literal; a scripted model's script must exist."""
    if model is not None and ":" not in model:
        raise HarnessError(f"--model {model!r} needs a provider prefix, e.g. anthropic:{model}")
    chosen = model or default
    if not isinstance(chosen, str) or ":" not in chosen:
        raise HarnessError(f"{path}: MODEL must be a 'provider:model' string literal, or pass --model")
    try:
        ref = ModelRef.parse(chosen)
    except ModelRefError as exc:
        raise HarnessError(str(exc)) from None
    if ref.script and not ref.script.is_file():
        raise HarnessError(f"scripted model: no script file {ref.model} "
                           "(use scripted:<path to a JSON list of responses>)")
    return ref


class HarnessAgent(Agent):
    name = "harness"
    kind = "harness"

    def __init__(self, path: Path, model: str | None = None):
        self.path = Path(path)
        self.source = check_harness(self.path)
        self.ref = harness_model(model, literal_constant(self.source, "MODEL"), self.path)
        self.model = str(self.ref)
        self._staging: Path | None = None

    @property
    def gateway_providers(self) -> tuple[str, ...]:
        """The gateway provider its model talks to; none for a scripted model (a file), whose sandbox has no way out."""
        return (self.ref.wire,) if self.ref.wire else ()

    def versions(self) -> dict[str, str]:
        return {"harness": str(self.path), "harness_sha256": hashlib.sha256(self.source.encode()).hexdigest(),
                "model": self.model}

    def min_budget_s(self) -> float:
        return 0.0 if self.ref.script else super().min_budget_s()  # a script answers at once

    def identity(self, versions: dict) -> tuple[str, str]:
        return f"harness:{self.path.name}", f"sha256:{str(versions.get('harness_sha256') or '')[:16] or 'unknown'}"

    def readonly_mounts(self) -> list[Path]:
        """A host folder holding a copy of the harness (and of a scripted model's script), shown read-only
        inside at the same path; made here because the sandbox's mounts are fixed before it starts."""
        if self._staging is None:
            root = paths.home() / "harness-staging"
            root.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix="h-", dir=root))
            (self._staging / "harness.py").write_text(self.source)
            if self.ref.script:
                shutil.copyfile(self.ref.script, self._staging / "script.json")
            self._staging.chmod(0o755)
        return [self._staging]

    def _model_inside(self) -> str:
        return f"scripted:{self._staging / 'script.json'}" if self.ref.script else self.model

    def run(self, ctx: TrialContext) -> AgentOutcome:
        staging = self.readonly_mounts()[0]
        try:
            return self._run(ctx, staging / "harness.py")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self._staging = None

    def _run(self, ctx: TrialContext, harness_file: Path) -> AgentOutcome:
        trial = {"prompt": ctx.prompt, "model": self._model_inside(), "deadline": ctx.deadline,
                 "workdir": ctx.sandbox.workdir_inside, "secret_names": sorted(ctx.env)}
        python = ctx.sandbox.python
        reader = _EventReader(ctx)
        try:
            proc = ctx.sandbox.spawn([python, "-u", str(harness_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**ctx.env, TRIAL_VAR: json.dumps(trial)})
        except Exception as exc:  # noqa: BLE001 - a sandbox that cannot start the process: a crashed trial
            reader.close()
            return AgentOutcome("crashed", f"the harness process could not start: {type(exc).__name__}: {exc}")
        threads = [threading.Thread(target=reader.read_events, args=(proc.stdout,), daemon=True),
                   threading.Thread(target=reader.read_output, args=(proc.stderr,), daemon=True)]
        for thread in threads:
            thread.start()
        overran = False
        try:
            proc.wait(timeout=max(0.0, ctx.deadline - time.time()) + GRACE_S)
        except subprocess.TimeoutExpired:
            overran = True
        finally:  # deadline, overrun or Ctrl-C: the process and everything it started end here
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for thread in threads:
                thread.join(timeout=5)
            reader.close()
        return self._outcome(ctx, proc.returncode, reader, overran)

    def _outcome(self, ctx: TrialContext, returncode: int, reader: "_EventReader", overran: bool) -> AgentOutcome:
        output = reader.output_tail()
        if reader.result is not None and returncode == 0:
            turns = reader.result.get("turns")
            return AgentOutcome("finished", turns=turns if isinstance(turns, int) else 0)
        if returncode == STOPPED_EXIT:
            return AgentOutcome("deadline", "the harness was stopped at the deadline")
        if overran or time.time() >= ctx.deadline - 0.5:
            detail = f"the harness was still running at the deadline and was killed (exit {returncode}); its output:\n{output}"
            ctx.trace.emit(Event("error", text=detail))
            return AgentOutcome("deadline", detail)
        detail = f"the harness process exited with {returncode}; its output:\n{output}"
        ctx.trace.emit(Event("error", text=detail))
        return AgentOutcome("crashed", detail)


class _EventReader:
    """Turns the harness process's channel into trace events and agent.log records. Everything on it is
    untrusted: unknown kinds and malformed lines are recorded as such, and the volume is capped: lines are read
    a chunk at a time and cut past MAX_EVENT_LINE (one newline-less gigabyte never sits in the host's memory),
    events stop at MAX_TRACE_BYTES, and agent.log stops at its cap with a last line saying how much was cut."""

    def __init__(self, ctx: TrialContext):
        self.ctx = ctx
        self.result: dict | None = None
        self._bytes = 0
        self._capped = False
        self._tail = bounded.Tail(OUTPUT_TAIL_CHARS)
        self._log_file = bounded.CappedLog(ctx.raw_log)

    def read_events(self, stream) -> None:
        for line in bounded.lines(stream, MAX_EVENT_LINE):
            self._bytes += len(line.data)  # what the host keeps: a cut line's rest was never held
            if self._bytes > MAX_TRACE_BYTES:
                if not self._capped:
                    self._capped = True
                    self.ctx.trace.emit(Event("error", text=f"the harness sent more than {MAX_TRACE_BYTES} bytes of "
                                                            "events; the rest is dropped"))
                continue
            if line.cut:
                self.ctx.trace.emit(Event("error", text=f"an event line of {len(line.data) + line.cut} bytes was cut at "
                                                        f"{MAX_EVENT_LINE} bytes and not read; its start: {line.text()[:200]}"))
                continue
            self._handle(line.text())

    def _handle(self, line: str) -> None:
        try:
            record = json.loads(line)
            if "result" in record and isinstance(record["result"], dict):
                self.result = record["result"]
            elif "raw" in record:
                self._log(record["raw"])
            elif "trace" in record:
                event = _event(record["trace"])
                self.ctx.trace.emit(event)
                if event.kind == "tool_call" and event.tool == "bash" and event.args:
                    self.ctx.progress(f"harness bash: {str(event.args.get('command'))[:120]}")
            else:
                raise ValueError("no trace, raw or result key")
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            self.ctx.trace.emit(Event("error", text=f"unreadable event from the harness ({exc}): {line[:500]}"))

    def read_output(self, stream) -> None:
        """The process's stderr (its prints, tracebacks, stack dumps): kept in agent.log, its tail in the outcome."""
        for line in bounded.lines(stream):
            text = line.marked().decode("utf-8", errors="replace").rstrip("\n")
            self._tail.add(line.marked())
            self._log({"ts": time.time(), "type": "output", "text": text})

    def output_tail(self) -> str:
        return self._tail.text()

    def close(self) -> None:
        self._log_file.close()

    def _log(self, record) -> None:
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        self._log_file.write(line.encode("utf-8", errors="backslashreplace"))  # a lone surrogate the JSON carried


def _event(data: dict) -> Event:
    if not isinstance(data, dict) or data.get("kind") not in get_args(Kind):
        raise ValueError(f"unknown event kind {data.get('kind') if isinstance(data, dict) else data!r}")
    kept = {k: v for k, v in data.items() if k in EVENT_FIELDS}
    if kept.get("usage") is not None:
        kept["usage"] = Usage(**{k: v for k, v in kept["usage"].items() if k in {f.name for f in fields(Usage)}})
    return Event(**kept)
