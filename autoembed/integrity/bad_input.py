"""Bad input from people: each case runs the real CLI (`python -m autoembed.cli ...`) in a fresh process and must
be refused: exit code 2, exactly one line holding `error:` that names the problem (the `expect` text), no
traceback, and no trial or loop folder left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from autoembed.editable import BANNER
from autoembed.integrity.bench import BASELINE, Bench
from autoembed.integrity.outcome import BAD_INPUT, ERROR, Row
from autoembed.paths import REPO_ROOT

TIMEOUT_S = 180
WORKERS = 3


def cases(bench: Bench, scratch: Path) -> list[tuple[str, list[str], dict, str]]:
    """(case, CLI arguments, environment changes, text the error line must hold)."""
    broken_task = scratch / "broken_task"
    shutil.copytree(bench.task, broken_task, ignore=shutil.ignore_patterns("data"))
    (broken_task / "task.toml").write_text((broken_task / "task.toml").read_text().replace("[eval]", "[eval\n", 1))
    edited = scratch / "edited_adapter.py"
    editable, adapter = BASELINE.read_text().split(BANNER, 1)
    edited.write_text(editable + BANNER + adapter.replace("def ", "def _audit_unused():\n    pass\n\n\ndef ", 1))
    foreign = scratch / "foreign_traces"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a loop\n")
    unreadable = scratch / "unreadable_traces"
    unreadable.mkdir()
    (unreadable / "ledger.jsonl").write_text("{not json\n\x00\x01")
    trial_folder = scratch / "a_trial_folder"
    trial_folder.mkdir()
    (trial_folder / "meta.json").write_text('{"run_id": "x", "agent": "recipe"}\n')
    no_bwrap = scratch / "path_without_bwrap"
    no_bwrap.mkdir()
    for tool in ("nsenter", "setpriv", "git"):
        if shutil.which(tool):
            (no_bwrap / tool).symlink_to(shutil.which(tool))
    task = ["--task", str(bench.task)]
    return [
        ("malformed task.toml", ["run", "recipe", "--task", str(broken_task), "--hours", "0.01"], {}, "is not valid TOML"),
        ("unknown agent", ["run", "nosuchagent", *task], {}, "unknown agent 'nosuchagent'"),
        ("unknown model (provider)", ["run", f"harness:{BASELINE}", "--model", "nosuch:model-x", *task], {},
         "unknown provider 'nosuch'"),
        ("model without a provider", ["run", f"harness:{BASELINE}", "--model", "claude-x", *task], {},
         "needs a provider prefix"),
        ("unknown loop target", ["loop", "--target", "nosuchfile", *task], {}, "invalid choice: 'nosuchfile'"),
        ("negative budget", ["run", "recipe", "--hours", "-1", *task], {}, "--hours must be positive"),
        ("non-numeric budget", ["run", "recipe", "--hours", "two", *task], {}, "invalid float value: 'two'"),
        ("missing API key", ["run", "claude", "--hours", "0.01", *task], {}, "no API key for anthropic"),
        ("missing Docker engine", ["run", "recipe", "--sandbox", "docker", "--hours", "0.01", *task],
         {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}, "no Docker engine answers"),
        ("missing bwrap", ["run", "recipe", "--sandbox", "bwrap", "--hours", "0.01", *task],
         {"PATH": str(no_bwrap)}, "bwrap is not installed"),
        ("foreign traces folder (report)", ["report", str(foreign)], {}, str(foreign)),
        ("unreadable traces folder (report)", ["report", str(unreadable)], {}, "line 1 is not a JSON record"),
        ("--resume of a folder that is not a loop", ["loop", "--resume", str(trial_folder), *task], {},
         "no config.json there"),
        ("a harness whose adapter was edited", ["run", f"harness:{edited}", "--model", "scripted:/dev/null", *task], {},
         "adapter"),
    ]


def run_bad_input(bench: Bench) -> list[Row]:
    scratch = bench.folder("bad-input")
    with ThreadPoolExecutor(WORKERS) as pool:  # each case is a fresh process that mostly waits on imports
        return list(pool.map(lambda case: _one(bench, *case), cases(bench, scratch)))


def _one(bench: Bench, name: str, argv: list[str], env_changes: dict, expect: str) -> Row:
    traces = bench.cases / "bad-input" / ("traces-" + "".join(c if c.isalnum() else "-" for c in name))
    env = {**os.environ, "AUTOEMBED_TRACES": str(traces), "PYTHONPATH": str(REPO_ROOT), **env_changes}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "autoembed.cli", *argv], capture_output=True, text=True,
                              timeout=TIMEOUT_S, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Row(name, BAD_INPUT, "accepted", f"still running after {TIMEOUT_S} s: it was not refused up front")
    seconds = time.perf_counter() - start
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    left = sorted(str(p) for p in traces.rglob("*")) if traces.exists() else []
    evidence = {"argv": argv, "exit": done.returncode, "stderr": done.stderr[-2000:]}
    if "Traceback" in done.stderr or "Traceback" in done.stdout:
        return Row(name, BAD_INPUT, "traceback", f"exit {done.returncode} with a traceback: "
                                                 f"{done.stderr.strip().splitlines()[-1][:200]}", seconds, evidence)
    if done.returncode != 2 or len(errors) != 1 or left:
        return Row(name, BAD_INPUT, "accepted", f"exit {done.returncode}, {len(errors)} error line(s), left {left[:3]}: "
                                                f"{done.stderr.strip()[-300:]}", seconds, evidence)
    if expect not in errors[0]:
        return Row(name, BAD_INPUT, ERROR, f"refused, but the line does not name the problem ({expect!r}): {errors[0]}",
                   seconds, evidence)
    return Row(name, BAD_INPUT, "refused", f"exit 2: {errors[0].strip()}", seconds, evidence)
