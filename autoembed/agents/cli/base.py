"""What every CLI agent shares: launch inside the sandbox, stream its JSON events to the raw log and
the normalized trace, stop it at the deadline, and re-prompt it while time remains.

A subclass supplies: the argv for a first or follow-up turn, its config files (written to a per-trial
config dir inside the workdir's hidden `.agent/` folder), the environment it needs, and a parser
from one raw stdout line to normalized Events.
"""

from __future__ import annotations

import abc
import shutil
import subprocess
import threading
import time
from pathlib import Path

from autoembed import bounded
from autoembed.agents.base import Agent, AgentOutcome, TrialContext
from autoembed.trace import Event

MAX_LINE = 4 * 2**20  # one line of the CLI's stream-json; a longer one is cut, logged as cut and not parsed
REPROMPT = ("You have about {minutes} minutes left of your budget. Keep improving the model in final_model/ "
            "(evaluate with task.py, try another idea), and finish every process before your last message.")


class CliAgent(Agent):
    binary: str = ""  # executable name on PATH
    product: str = ""  # the CLI's own name: the key of its version in versions()
    max_turns: int = 20  # first prompt + re-prompts

    def __init__(self, model: str | None = None):
        self.model = model

    # -- to implement ---------------------------------------------------------------------------
    @abc.abstractmethod
    def argv(self, ctx: TrialContext, prompt: str, first: bool) -> list[str]:
        """Command line for one turn; first=False continues the previous session."""

    def write_config(self, ctx: TrialContext, config_dir: Path) -> dict[str, str]:
        """Write config files under config_dir (host path); return env vars pointing the CLI at them."""
        return {}

    @abc.abstractmethod
    def parse_line(self, line: str) -> list[Event]:
        """One raw stdout line -> zero or more normalized events (never raises on junk)."""

    # -- shared ---------------------------------------------------------------------------------
    def identity(self, versions: dict) -> tuple[str, str]:
        words = str(versions.get(self.product) or "").split()  # "0.61.0", or "codex-cli 0.171.0"
        found = [w for w in words if w[:1].isdigit()]
        return self.product or self.name, found[0] if found else "unknown"

    def config_dir(self, ctx: TrialContext) -> Path:
        path = ctx.workdir / ".agent" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def inside(self, ctx: TrialContext, host_path: Path) -> str:
        """Host path under the workdir -> the same path as seen inside the sandbox."""
        return str(Path(ctx.sandbox.workdir_inside) / host_path.relative_to(ctx.workdir))

    def run(self, ctx: TrialContext) -> AgentOutcome:
        if shutil.which(self.binary) is None and ctx.sandbox.kind in ("none", "bwrap"):
            return AgentOutcome("crashed", f"{self.binary!r} is not on PATH: install it (see README, 'Agents')")
        env = {**ctx.env, **self.write_config(ctx, self.config_dir(ctx))}
        prompt, turns = ctx.prompt, 0
        with bounded.CappedLog(ctx.raw_log) as raw:  # what the CLI prints, up to a cap, then a line saying what was cut
            while True:
                turns += 1
                ctx.trace.emit(Event("user", text=prompt, source=self.name))
                code = self._one_turn(ctx, self.argv(ctx, prompt, first=turns == 1), env, raw)
                left = ctx.deadline - time.time()
                if left <= 0:
                    return AgentOutcome("deadline", turns=turns)
                if code not in (0, None):
                    return AgentOutcome("crashed", f"{self.binary} exited with code {code}", turns=turns)
                if left <= ctx.reprompt_margin_s or turns >= self.max_turns:
                    return AgentOutcome("finished", turns=turns)
                ctx.progress(f"{self.name} stopped with {left / 60:.0f} min left: re-prompting")
                prompt = REPROMPT.format(minutes=int(left // 60))

    def _one_turn(self, ctx: TrialContext, argv: list[str], env: dict[str, str], raw) -> int | None:
        proc = ctx.sandbox.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        timer = threading.Timer(max(0.0, ctx.deadline - time.time()), _kill, args=(ctx, proc))
        timer.start()
        try:
            for line in bounded.lines(proc.stdout, MAX_LINE):  # read a chunk at a time: no line is held whole
                raw.write(line.marked())
                if line.cut:  # a cut JSON line cannot be parsed: say so rather than guess
                    ctx.trace.emit(Event("error", text=f"a line of {len(line.data) + line.cut} bytes from {self.binary} "
                                                       f"was cut at {MAX_LINE} bytes and not parsed", source=self.name))
                    continue
                for event in self.parse_line(line.data.decode("utf-8", "replace")):
                    ctx.trace.emit(event)
                    if event.kind == "tool_call":
                        ctx.progress(f"{self.name} tool {event.tool}: {str(event.args)[:120]}")
            return proc.wait()
        finally:
            timer.cancel()


def _kill(ctx: TrialContext, proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        ctx.progress("deadline reached: stopping the agent")
        ctx.sandbox.stop()
        proc.kill()
