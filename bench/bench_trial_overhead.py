#!/usr/bin/env python3
"""Trial overhead: what `autoembed run` adds around the agent, per sandbox.

    PYTHONPATH=. python bench/bench_trial_overhead.py                 # tiny task, bwrap and docker, 3 reps
    PYTHONPATH=. python bench/bench_trial_overhead.py --task embed    # the real task (its scoring needs a GPU)

Each trial is a fresh `python -m autoembed.cli run` process, as a user runs it, so imports, the CUDA start and
the disk caches count. The agent is harnesses/baseline.py driven by the scripted provider: its first command
writes the time inside the sandbox (`date +%s.%N`), its second copies the base model to final_model/ (so the
scorer has a model to evaluate, as after a real trial), then it stops. Two intervals per trial:

  start:  the process launched -> the agent's first command runs inside the sandbox
          = sandbox prepare (make_sandbox: docker checks its image) + scorer prepare (fills the scorer's caches
            when this machine has none: once) + seed (the workdir) + sandbox start
            + the rest (process start and imports, task spec, harness load, first model call, exec)
  finish: the agent's last trace event -> score.json written
          = stop + freeze (sandbox stop, trace.md, final_model hashes, chmod) + scoring (the sealed scorer)

The first trial per sandbox starts from empty harness-side caches (AUTOEMBED_HOME in a temp folder) and is
reported on its own row ("cold") and left out of the medians: it prepares the scorer (the n-gram indexes, the
base model's scores and token features) and, for docker, checks the image. Each interval is also shown as a share
of a 10-minute trial, and the scorer's own breakdown (score.json's stage_seconds) in a second table. Scoring on a
CPU is the scorer's encoding work and grows with the task's fast-mode sizes; the tiny task (tests/tiny_task.py:
3 queries x 10 documents per task) keeps it to seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRIAL_S = 600.0  # the reference: a 10-minute trial
FIRST_CMD_FILE = ".bench_first_cmd"
SCRIPT = [
    {"tool_calls": [{"name": "bash", "arguments": {"command": f"date +%s.%N > {FIRST_CMD_FILE}"}}]},
    {"tool_calls": [{"name": "bash", "arguments": {
        "command": "python3 -c 'import shutil, task; shutil.copytree(task.BASE_MODEL, \"final_model\")'"}}]},
    {"text": "done"},
]


def one_trial(task: str, sandbox: str, out: Path, script: Path) -> dict:
    """One trial as a user runs it: a fresh `autoembed run` process (imports, CUDA start and disk caches included)."""
    from autoembed.trace import read_trace

    cmd = [sys.executable, "-m", "autoembed.cli", "run", f"harness:{REPO / 'harnesses' / 'baseline.py'}", "--task", task,
           "--hours", "0.05", "--sandbox", sandbox, "--model", f"scripted:{script}", "--out", str(out)]
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          check=False)
    t_end = time.time()
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else {}
    score = json.loads((out / "score.json").read_text()) if (out / "score.json").is_file() else None
    if done.returncode != 0 or meta.get("exit_reason") != "finished" or score is None:
        raise RuntimeError(f"trial did not finish cleanly (exit {done.returncode}): {meta.get('exit_reason')} "
                           f"{meta.get('exit_detail', '')[-800:]} {meta.get('score_error', '')[-800:]} {done.stderr[-2000:]}")
    if score.get("scored_as") != "final_model":
        raise RuntimeError(f"final_model was not scored: {score.get('reasons')}")
    t_first = float((out / "workdir" / FIRST_CMD_FILE).read_text().strip())
    events = read_trace(out / "trace.jsonl")
    t_agent_exit = datetime.fromisoformat(events[-1].ts).timestamp()
    t_score = (out / "score.json").stat().st_mtime
    start, finish = t_first - t0, t_score - t_agent_exit
    known = meta.get("sandbox_prepare_s", 0.0) + meta["scorer_prepare_s"] + meta["seed_s"] + meta["sandbox_start_s"]
    return {
        "start": start, "prepare": meta.get("sandbox_prepare_s", 0.0), "scorer_prepare": meta["scorer_prepare_s"],
        "seed": meta["seed_s"], "sandbox_start": meta["sandbox_start_s"], "start_rest": start - known,
        "finish": finish, "scoring": meta["score_seconds"], "stop_freeze": finish - meta["score_seconds"],
        "total": t_end - t0, "stages": score.get("stage_seconds", {}),
    }


def import_seconds() -> float:
    """What a `python -m autoembed.cli run` process pays before run() starts: importing the runner and scorer."""
    t = time.time()
    subprocess.run([sys.executable, "-c", "import autoembed.trial.run, autoembed.sealed.scorer"], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.time() - t


COLUMNS = [("start", "run -> 1st cmd"), ("prepare", "sandbox prepare"), ("scorer_prepare", "scorer prepare"),
           ("seed", "seed"), ("sandbox_start", "sandbox start"), ("start_rest", "rest"), ("finish", "agent exit -> score.json"), ("stop_freeze", "stop+freeze"),
           ("scoring", "scoring")]


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| sandbox | n | " + " | ".join(label for _, label in COLUMNS) + " | start % of 10 min | "
             "finish % of 10 min |",
             "|---|---|" + "---|" * (len(COLUMNS) + 2)]
    for sandbox, rows in results.items():
        med = {key: statistics.median(r[key] for r in rows) for key, _ in COLUMNS}
        cells = [f"{med[key]:.2f}" + (f" ({max(r[key] for r in rows):.2f})" if key in ("start", "finish") and len(rows) > 1
                                      else "") for key, _ in COLUMNS]
        shares = [100 * med[k] / TRIAL_S for k in ("start", "finish")]
        lines.append(f"| {sandbox} | {len(rows)} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{s:.2f}%" for s in shares) + " |")
    return "\n".join(lines)


def stage_table(results: dict[str, list[dict]]) -> str:
    """The scorer's own breakdown (score.json's stage_seconds), median per stage."""
    names = list(dict.fromkeys(name for rows in results.values() for r in rows for name in r["stages"]))
    lines = ["| sandbox | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for sandbox, rows in results.items():
        cells = [f"{statistics.median(r['stages'].get(n, 0.0) for r in rows):.2f}" for n in names]
        lines.append(f"| {sandbox} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default=None, help="task name or folder (default: a tiny copy of embed, built in a temp dir)")
    p.add_argument("--sandboxes", default="bwrap,docker")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument("--keep", action="store_true", help="keep the trials' folders (printed) instead of deleting them")
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-trial-"))
    os.environ.setdefault("AUTOEMBED_HOME", str(work / "home"))  # caches shared by the reps, not the user's
    if args.task is None:
        from tests.tiny_task import make_tiny_task

        task = str(make_tiny_task(work / "task"))
    else:
        task = args.task
    script = work / "script.json"
    script.write_text(json.dumps(SCRIPT))

    from autoembed.sandbox.bwrap import bwrap_problem
    from autoembed.sandbox.factory import docker_problem

    problems = {"bwrap": bwrap_problem, "docker": docker_problem, "none": lambda: None}
    results: dict[str, list[dict]] = {}
    for sandbox in args.sandboxes.split(","):
        problem = problems[sandbox]()
        if problem:
            print(f"skipping {sandbox}: {problem}", file=sys.stderr)
            continue
        rows = []
        for rep in range(args.reps + 1):
            row = one_trial(task, sandbox, work / f"{sandbox}-{rep}", script)
            label = "cold (first on this machine)" if rep == 0 else f"rep {rep}"
            print(f"{sandbox} {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "stages"),
                  file=sys.stderr)
            if rep:
                rows.append(row)
            else:
                results[f"{sandbox}, cold"] = [row]
        results[sandbox] = rows

    imports = import_seconds()
    load = os.getloadavg()
    print(f"\n{platform.node()} ({os.cpu_count()} CPUs), load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
          f"task {task}; seconds, median of {args.reps} (max in parentheses)\n")
    print(table(results))
    print("\nThe scorer's stages (score.json stage_seconds), seconds:\n")
    print(stage_table(results))
    print(f"\nCLI process start (import autoembed.trial.run + the scorer, before run() begins): {imports:.2f} s "
          f"({100 * imports / TRIAL_S:.2f}% of 10 min)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "import_s": imports, "task": task,
                                               "load": load}, indent=2))
    if args.keep:
        print(f"trials kept in {work}")
    else:  # run() leaves each workdir read-only
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
