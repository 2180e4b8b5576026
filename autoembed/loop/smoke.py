"""The smoke check a candidate must pass before it may spend a trial: the fixed adapter unchanged, and then
- recipe: the script trains a few steps on a tiny slice of the pool on CPU and saves a model;
- harness: the harness takes one turn against the scripted provider and finishes without crashing.
The candidate is model-written code, so it runs in a sandbox (bwrap, or none when the loop was asked for none).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from autoembed import editable

RECIPE_TIMEOUT_S = 300.0
HARNESS_TIMEOUT_S = 120.0
POOL_ROWS = 64
OUTPUT_CHARS = 3000
COMPILE_TIMEOUT_S = 30.0


@dataclass
class SmokeResult:
    ok: bool
    error: str  # what the meta-agent is shown when it failed
    seconds: float


def smoke_check(target: str, source: str, adapter_sha256: str, workdir: Path, *, sandbox: str, task: str) -> SmokeResult:
    started = time.time()
    error = static_check(source, adapter_sha256)
    if error:
        return SmokeResult(False, error, time.time() - started)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check = _recipe if target == "recipe" else _harness
    ok, error = check(source, workdir, sandbox, task)
    return SmokeResult(ok, error, time.time() - started)


def static_check(source: str, adapter_sha256: str) -> str | None:
    """What is wrong with the file before anything runs it (None: nothing): over the size cap, not UTF-8 text, NUL
    bytes, the banner or the fixed adapter changed, or it does not compile. The compile runs in a child process with
    a time limit: a model's file can overflow the compiler's recursion limit (1+1+...+1, 3,000 terms) or worse,
    and the loop's own process must survive whatever the compiler does with it."""
    try:
        editable.check_size(source, "the candidate")
        data = source.encode("utf-8")
    except editable.EditableError as exc:
        return f"EditableError: {exc}"
    except UnicodeEncodeError as exc:
        return f"the candidate is not UTF-8 text ({exc.reason} at character {exc.start}): write plain text"
    nul = data.find(b"\0")
    if nul >= 0:
        return f"the candidate holds NUL bytes (the first at byte {nul}): not Python source"
    try:
        editable.check_adapter(source, adapter_sha256, "the candidate")
    except editable.EditableError as exc:
        return f"EditableError: {exc}"
    return _compile_error(data)


def _compile_error(data: bytes) -> str | None:
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", COMPILE_CHILD], input=data, capture_output=True,
                              timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"the candidate did not compile within {COMPILE_TIMEOUT_S:.0f} s"
    if proc.returncode == 0:
        return None
    message = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode < 0 or not message:  # killed by a signal: the compiler itself crashed on this file
        return f"compiling the candidate crashed the compiler (exit {proc.returncode}): {_tail(proc.stderr.decode('utf-8', 'replace'))}"
    return _tail(message)


# reads the file on stdin, prints "Type: message" for what compile() raised (SyntaxError, RecursionError, ...)
COMPILE_CHILD = """
import sys
try:
    compile(sys.stdin.buffer.read(), "candidate.py", "exec")
except Exception as exc:
    hint = ": nested too deeply to compile; split the expression" if isinstance(exc, RecursionError) else ""
    print(f"{type(exc).__name__}: {exc}{hint}")
    sys.exit(1)
"""


def smoke_sandbox_kind(trial_sandbox: str) -> str:
    """bwrap for the smoke check (a docker start per check costs more than the check); none only when asked for."""
    return "none" if trial_sandbox == "none" else "bwrap"


def _recipe(source: str, workdir: Path, sandbox: str, task: str) -> tuple[bool, str]:
    from autoembed.sandbox.base import SandboxConfig
    from autoembed.sandbox.factory import make_sandbox
    from autoembed.task.base_model import resolve_base_model
    from autoembed.task.spec import load_spec

    spec = load_spec(task)
    (workdir / "train.py").write_text(source)
    _write_pool_slice(spec.pool_path, workdir / "pool.jsonl.gz", POOL_ROWS)
    base = resolve_base_model(spec.base_model, spec.base_model_sha256)
    args = ["train.py", "--pool", "pool.jsonl.gz", "--base", str(base), "--out", "final_model",
            "--minutes", f"{RECIPE_TIMEOUT_S / 60:.1f}", "--max-steps", "2", "--device", "cpu", "--batch-size", "4",
            "--max-seq-length", "32"]
    config = SandboxConfig(workdir=workdir, deadline=time.time() + RECIPE_TIMEOUT_S + 30)
    with make_sandbox(smoke_sandbox_kind(sandbox), config, task=task, progress=lambda _: None) as box:
        argv = [box.python, *args]
        result, output = _run_bounded(box, argv, workdir / "agent.log",
                                      env={"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    if result.timed_out:
        return False, f"the recipe did not finish 2 CPU steps within {RECIPE_TIMEOUT_S:.0f} s:\n{_tail(output)}"
    if result.returncode != 0:
        return False, f"the recipe exited with {result.returncode}:\n{_tail(output)}"
    if not (workdir / "final_model" / "modules.json").is_file():
        return False, f"the recipe exited 0 but saved no final_model/:\n{_tail(output)}"
    return True, ""


def _harness(source: str, workdir: Path, sandbox: str, task: str) -> tuple[bool, str]:
    from autoembed.agents.base import TrialContext
    from autoembed.agents.harness import HarnessAgent
    from autoembed.sandbox.base import SandboxConfig
    from autoembed.sandbox.factory import make_sandbox
    from autoembed.trace import TraceWriter, read_trace

    path = workdir / "harness.py"
    path.write_text(source)
    script = workdir / "one_turn.json"
    script.write_text(json.dumps([{"text": "Smoke check: one turn, no tools."}]))
    box_dir = workdir / "work"
    box_dir.mkdir(exist_ok=True)
    deadline = time.time() + HARNESS_TIMEOUT_S
    try:
        agent = HarnessAgent(path, model=f"scripted:{script}")
    except Exception as exc:  # the file does not import: the candidate is invalid
        return False, f"the harness does not load: {type(exc).__name__}: {exc}"
    # the harness runs as a process inside: the sandbox shows the staged copy of the file (read-only)
    config = SandboxConfig(workdir=box_dir, deadline=deadline, readonly_extra=agent.readonly_mounts())
    with make_sandbox(smoke_sandbox_kind(sandbox), config, task=task, progress=lambda _: None) as box:
        ctx = TrialContext(workdir=box_dir, sandbox=box, deadline=deadline, prompt="Smoke check.", model=agent.model,
                           trace=TraceWriter(workdir / "trace.jsonl", source="harness"), raw_log=workdir / "agent.log",
                           run_dir=workdir, progress=lambda _: None)
        outcome = agent.run(ctx)
    if outcome.exit_reason != "finished":
        errors = [e.text for e in read_trace(workdir / "trace.jsonl") if e.kind == "error"]
        return False, f"the harness {outcome.exit_reason}: {_tail(outcome.detail or ' '.join(errors))}"
    return True, ""


def _write_pool_slice(src: Path, dst: Path, rows: int) -> None:
    with gzip.open(src, "rt", encoding="utf-8") as fh, gzip.open(dst, "wt", encoding="utf-8") as out:
        for i, line in enumerate(fh):
            if i >= rows:
                break
            out.write(line)


def _run_bounded(box, argv: list[str], log_path: Path, env: dict[str, str]):
    """Run the candidate in the box for at most RECIPE_TIMEOUT_S, its output read through a pipe a chunk at a
    time into a capped log and a bounded tail (the candidate decides how much it prints, not how much the loop
    keeps): ((returncode, timed_out), the tail of its output)."""
    import threading
    from types import SimpleNamespace

    from autoembed import bounded

    tail = bounded.Tail(4 * OUTPUT_CHARS)
    with bounded.CappedLog(log_path) as log:
        proc = box.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        reader = threading.Thread(target=bounded.pump, args=(proc.stdout, log, tail), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=RECIPE_TIMEOUT_S)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
        reader.join(timeout=5)
    return SimpleNamespace(returncode=proc.returncode, timed_out=timed_out), tail.text().strip()


def _tail(text: str) -> str:
    return text if len(text) <= OUTPUT_CHARS else "…" + text[-OUTPUT_CHARS:]
