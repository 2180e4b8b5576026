"""The recipe agent: no LLM, no network. It writes a training recipe (harnesses/recipe.py, or the file given
as `recipe:<path>`) into the workdir as train.py and runs it inside the sandbox with a budget that ends
before the deadline, so final_model/ is saved in time. It is the offline default and the floor every LLM
agent must beat. The host never imports the recipe: it checks the hash of its fixed adapter and runs it.

Every command it runs and its result go to the trace as tool_call / tool_result events, the script's
output to the raw log, and its progress lines to ctx.progress about once a minute.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from autoembed import bounded, editable, nofollow
from autoembed.agents.base import Agent, AgentOutcome, TrialContext
from autoembed.paths import REPO_ROOT
from autoembed.trace import Event

TRAIN_SCRIPT = REPO_ROOT / "harnesses" / "recipe.py"
# sha256 of everything below the banner in harnesses/recipe.py; change both together, on purpose
FIXED_ADAPTER_SHA256 = "b6dafa71f5b4f139c53e4abcfda6a464afe7e6d306f6683a8614a99c3f21117b"
RESULT_CHARS = 6000  # tail of a command's output kept in its tool_result event
OUTPUT_TAIL_BYTES = 1 << 20  # of train.py's output, kept in memory for its summary block
PROGRESS_EVERY_S = 60.0
TERM_GRACE_S = 8.0  # SIGTERM this long before the deadline if the script is still running (it saves on SIGTERM)

# Runs inside the sandbox: what the script will see (python, torch, GPU), for the record. The base model and the
# pool are not probed for: the trial context names them.
PROBE = r"""
import json, sys
info = {"python": sys.executable, "python_version": sys.version.split()[0]}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.cuda.is_available())
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
except Exception as exc:
    info["torch_error"] = repr(exc)
print("PROBE " + json.dumps(info))
"""


class RecipeAgent(Agent):
    name = "recipe"
    kind = "recipe"
    gateway_providers = ()  # no model: no way out of the sandbox at all

    def __init__(self, model: str | None = None, *, path: str | Path | None = None, batch_size: int | None = None, max_steps: int | None = None,
                 lr: float | None = None, seed: int = 0, min_margin_s: float = 15.0, max_margin_s: float = 120.0):
        self.model = model  # unused: the recipe needs no LLM; kept so `--model` is accepted and recorded
        self.path = Path(path) if path is not None else TRAIN_SCRIPT
        self.script = self.path.read_text(encoding="utf-8")  # read once: what is checked is what runs
        editable.check_adapter(self.script, FIXED_ADAPTER_SHA256, str(self.path))
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.lr = lr
        self.seed = seed
        self.min_margin_s = min_margin_s
        self.max_margin_s = max_margin_s

    def versions(self) -> dict[str, str]:
        return {"recipe": str(self.path), "recipe_sha256": editable.file_hash(self.script)}

    def identity(self, versions: dict) -> tuple[str, str]:
        return f"recipe:{self.path.name}", f"sha256:{str(versions.get('recipe_sha256') or '')[:16] or 'unknown'}"

    def margin_s(self, seconds_left: float) -> float:
        """Time kept back from the deadline: process start, the script's exit and a kill grace."""
        return min(self.max_margin_s, self.min_margin_s + 0.02 * max(seconds_left, 0.0))

    def run(self, ctx: TrialContext) -> AgentOutcome:
        try:
            return self._run(ctx)
        except Exception as exc:  # an agent never raises for its own failures
            import traceback

            ctx.trace.emit(Event(kind="error", text=traceback.format_exc()))
            return AgentOutcome("crashed", f"{type(exc).__name__}: {exc}")

    def _run(self, ctx: TrialContext) -> AgentOutcome:
        box = ctx.sandbox
        ctx.trace.emit(Event(kind="assistant", text=(
            "Reference recipe (no LLM): write train.py (MultipleNegativesRankingLoss with in-batch negatives, "
            "no two pairs of one group per batch), find the base model and the training pool, and train within "
            "the time left, saving final_model/ before the deadline.")))

        script = self.script

        def write_script() -> tuple[int, str]:
            (ctx.workdir / "train.py").write_text(script, encoding="utf-8")
            return 0, f"wrote train.py ({len(script.splitlines())} lines)"

        self._tool(ctx, "write_file", {"path": "train.py", "bytes": len(script.encode())}, write_script)

        python = box.python
        probe = self._exec(ctx, [python, "-c", PROBE], timeout=min(300.0, max(box.seconds_left() / 4, 30.0)))
        info = _parse_probe(probe[1])
        base, pool = ctx.base_model, ctx.pool
        if not nofollow.is_file(ctx.workdir, pool):
            return self._give_up(ctx, f"no training pool at {pool} in the workdir")
        if not base:
            return self._give_up(ctx, "the trial context names no base model")

        left = box.seconds_left()
        minutes = (left - self.margin_s(left)) / 60.0
        if minutes < 0.25:
            return self._give_up(ctx, f"only {left:.0f} s left: not enough to train and save", reason="deadline")
        argv = train_command(python, "train.py", pool=pool, base=str(base), out="final_model", minutes=minutes,
                             knobs=TrainKnobs(seed=self.seed, batch_size=self.batch_size, max_steps=self.max_steps,
                                              lr=self.lr))
        ctx.progress(f"recipe: training for {minutes:.1f} min on {'GPU ' + info.get('gpu', '') if info.get('cuda') else 'CPU'}")
        returncode, output = self._train(ctx, argv)

        summary = parse_summary(output)
        saved = any(nofollow.is_file(ctx.workdir, f"final_model/{name}") for name in ("modules.json", "config.json"))
        extra = {"probe": info, "minutes": round(minutes, 3), "summary": summary, "returncode": returncode}
        ctx.trace.emit(Event(kind="assistant", text=(
            f"train.py exited with {returncode}; final_model {'saved' if saved else 'MISSING'}; "
            f"{summary.get('steps', '?')} steps, last loss {summary.get('last_loss', '?')}.")))
        if not saved:
            return AgentOutcome("crashed", f"train.py exited with {returncode} and left no final_model/", 1, extra)
        if returncode != 0:
            return AgentOutcome("crashed", f"train.py exited with {returncode} (final_model/ was saved)", 1, extra)
        return AgentOutcome("finished", "", 1, extra)

    # -- commands ---------------------------------------------------------------------------------

    def _tool(self, ctx: TrialContext, tool: str, args: dict, action) -> tuple[int, str]:
        call_id = uuid.uuid4().hex[:12]
        ctx.trace.emit(Event(kind="tool_call", tool=tool, call_id=call_id, args=args))
        returncode, output = action()
        ctx.trace.emit(Event(kind="tool_result", tool=tool, call_id=call_id, text=_tail(output),
                             is_error=returncode != 0))
        return returncode, output

    def _exec(self, ctx: TrialContext, argv: list[str], timeout: float) -> tuple[int, str]:
        def action():
            result = ctx.sandbox.exec(argv, timeout=timeout, env={"HF_HUB_OFFLINE": "1"})
            output = result.stdout + (("\n" + result.stderr) if result.stderr.strip() else "")
            if result.timed_out:
                output += f"\n[timed out after {result.duration_s:.0f} s]"
            return result.returncode, output

        return self._tool(ctx, "bash", {"command": _display(argv)}, action)

    def _train(self, ctx: TrialContext, argv: list[str]) -> tuple[int, str]:
        """Run train.py with its output read through a pipe into the raw log (capped, lines cut past a bound) and
        a bounded tail; SIGTERM it shortly before the deadline. The script is editable by a meta-agent: it decides
        how much it prints, the host decides how much it keeps."""

        def action():
            output = _Output()
            with bounded.CappedLog(ctx.raw_log) as log:
                proc = ctx.sandbox.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         env={"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
                reader = threading.Thread(target=bounded.pump, args=(proc.stdout, log, output.tail),
                                          kwargs={"on_line": output.see}, daemon=True)
                reader.start()
                returncode = self._wait(ctx, proc, output)
                reader.join(timeout=5)
            return returncode, output.tail.text()

        return self._tool(ctx, "bash", {"command": _display(argv)}, action)

    def _wait(self, ctx: TrialContext, proc: subprocess.Popen, output: "_Output") -> int:
        last_progress, shown, termed = time.time(), None, False
        while proc.poll() is None:
            now = time.time()
            if not termed and now >= ctx.deadline - TERM_GRACE_S:
                proc.terminate()
                termed = True
                ctx.progress("recipe: deadline near, asked train.py to save and stop")
            if now >= ctx.deadline:
                proc.kill()
                break
            if now - last_progress >= PROGRESS_EVERY_S:
                if output.step_line and output.step_line != shown:
                    ctx.progress(f"recipe: {output.step_line}")
                    shown = output.step_line
                last_progress = now
            time.sleep(0.5)
        return proc.wait()

    def _give_up(self, ctx: TrialContext, why: str, reason: str = "crashed") -> AgentOutcome:
        ctx.trace.emit(Event(kind="error", text=why))
        ctx.progress(f"recipe: {why}")
        return AgentOutcome(reason, why)


def _display(argv: list[str]) -> str:
    if len(argv) >= 3 and argv[1] == "-c":  # the probe: show it readably rather than as one quoted blob
        return f"{argv[0]} -c <<'PY'\n{argv[2].strip()}\nPY"
    return shlex.join(argv)


def _tail(text: str) -> str:
    return text if len(text) <= RESULT_CHARS else f"[… {len(text) - RESULT_CHARS} chars cut]\n" + text[-RESULT_CHARS:]


def _parse_probe(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith("PROBE "):
            try:
                return json.loads(line[len("PROBE "):])
            except json.JSONDecodeError:
                break
    return {}


@dataclass(frozen=True)
class TrainKnobs:
    """The recipe script's optional flags (None: the script's own default)."""
    seed: int = 0
    batch_size: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    device: str | None = None


def train_command(python: str, script: str, *, pool: str, base: str, out: str, minutes: float,
                  knobs: TrainKnobs = TrainKnobs()) -> list[str]:
    """The reference recipe's command line: the one the recipe agent runs inside the sandbox and the reference
    ladder runs on the host."""
    argv = [python, script, "--pool", pool, "--base", base, "--out", out, "--minutes", f"{minutes:.4g}",
            "--seed", str(knobs.seed)]
    for flag, value in (("--batch-size", knobs.batch_size), ("--max-steps", knobs.max_steps), ("--lr", knobs.lr),
                        ("--device", knobs.device)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def parse_summary(output: str) -> dict:
    """The key: value block train.py prints after its last '---' line."""
    block = output.rsplit("\n---\n", 1)
    if len(block) < 2:
        return {}
    summary = {}
    for line in block[1].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.isidentifier():
            summary[key] = value.strip()
    return summary


class _Output:
    """What the host keeps of train.py's output: a bounded tail (its summary block, a crash) and its last step line."""

    def __init__(self):
        self.tail = bounded.Tail(OUTPUT_TAIL_BYTES)
        self.step_line: str | None = None

    def see(self, line: bounded.Line) -> None:
        text = line.text()
        if "] step " in text:
            self.step_line = text.split("] ", 1)[-1][:300]
