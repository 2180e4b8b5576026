"""What every case of the audit shares: one tiny task, one harness-side home (the scorer prepared once), one traces
folder, an environment with no key, and the one way to run a trial (autoembed.trial.run.run) with a scripted agent.

A scripted agent is the baseline harness (harnesses/baseline.py, run as a process inside the sandbox) driven by the
`scripted:` provider: no LLM, a fixed list of tool calls, usually "write this program, run it". So every attack
runs where a real agent's code runs, through the real sandbox, freeze and sealed scorer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

from autoembed import nofollow
from autoembed.integrity.tiny_task import make_tiny_task
from autoembed.paths import REPO_ROOT

BASELINE = REPO_ROOT / "harnesses" / "baseline.py"
# every variable that could hand a trial a real key or endpoint: the audit runs without any
KEY_VARS = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
            "OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL", "GEMINI_API_KEY", "GOOGLE_API_KEY",
            "GOOGLE_GEMINI_BASE_URL")
TRIAL_HOURS = 0.06  # 216 s: the harness starts no turn within 120 s of the deadline; every scripted agent
# finishes in seconds, and the trial ends when it does
# dev tasks big enough that the base model is not perfect on them (training on dev can show) and that the
# 13-gram scan has items to hit; still seconds to score on a CPU
TASK_SIZE = {"queries": 20, "docs": 60}
# the audit task's [limits]: small enough that filling the disk or the process table takes seconds; and its
# gateway's per-call timeout, short enough that a hung LLM call costs seconds
SETTINGS = {"memory_gb": "4", "pids": "256", "disk_gb": "1", "call_timeout_s": "10"}


class Bench:
    """The audit's scratch folder: root/task (the tiny task), root/home (AUTOEMBED_HOME), root/traces, root/cases."""

    def __init__(self, root: Path, say=print):
        self.root = Path(root)
        self.say = say
        self.cases = self.root / "cases"
        self.cases.mkdir(parents=True, exist_ok=True)
        os.environ["AUTOEMBED_HOME"] = str(self.root / "home")
        os.environ["AUTOEMBED_TRACES"] = str(self.root / "traces")
        os.environ["HF_HUB_OFFLINE"] = "1"
        for name in KEY_VARS:
            os.environ.pop(name, None)
        built = self.root / "task" / ".built"
        if not built.is_file():
            built.parent.mkdir(parents=True, exist_ok=True)
            folder = make_tiny_task(self.root / "task", **TASK_SIZE)
            toml = folder / "task.toml"
            text = toml.read_text()
            for key, value in SETTINGS.items():
                text, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
                if n != 1:
                    raise ValueError(f"{toml}: expected one '{key} = ...' line, found {n}")
            toml.write_text(text)
            built.write_text(str(folder))
        self.task = Path(built.read_text())

    def folder(self, case: str) -> Path:
        """A fresh folder for one case (its script, its trial's run folder)."""
        path = self.cases / case
        path.mkdir(parents=True, exist_ok=False)
        return path

    def scripted_trial(self, case: str, steps: list[dict], *, sandbox: str = "bwrap", hours: float = TRIAL_HOURS,
                       model: str | None = None, **run_kw):
        """One real trial (autoembed.trial.run.run) of the baseline harness replaying steps; (TrialResult, case folder)."""
        from autoembed.trial.run import run

        folder = self.folder(case)
        script = folder / "script.json"
        script.write_text(json.dumps(steps))
        result = run(f"harness:{BASELINE}", task=str(self.task), hours=hours, sandbox=sandbox,
                     model=model or f"scripted:{script}", out=folder / "run", progress=self._progress(case),
                     check_key=False, **run_kw)
        return result, folder

    def _progress(self, case: str):
        return lambda line: self.say(f"  [{case}] {line}")


PROGRAM_OK = "[audit] the agent program ran to its end"  # echoed after it: a case checks its cheat really happened


def program(code: str, name: str = "agent_program.py", then: str = "") -> list[dict]:
    """Scripted steps that write a Python program into the workdir and run it there (then: more shell after it)."""
    command = f"python3 {name} && echo '{PROGRAM_OK}'" + (f" ; {then}" if then else "")
    return [{"tool_calls": [{"name": "write_file", "arguments": {"path": name, "content": code}}]},
            {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}]


def shell(*commands: str) -> list[dict]:
    return [{"tool_calls": [{"name": "bash", "arguments": {"command": c}}]} for c in commands]


def read_agent_json(workdir: Path, name: str) -> dict | None:
    """A JSON report the agent's program left in its workdir, read without following links (the agent owns it)."""
    try:
        return json.loads(nofollow.read_text(workdir, name, limit=1 << 20))
    except (OSError, ValueError):
        return None


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def timed():
    """with timed() as clock: ...; clock() -> seconds so far."""
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start
