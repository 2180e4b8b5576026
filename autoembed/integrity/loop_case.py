"""A real loop (`python -m autoembed.loop`, the search meta-agent on the recipe, real trials in bwrap on the tiny
task), killed with SIGKILL while a trial is being scored, then resumed. Two rows: the fault (survived when the
resumed loop's records agree: every trial begun has exactly one ledger row, every candidate is decided, git's main
is the last kept commit and the working tree is clean) and the clean control (no trial of an honest loop flagged)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autoembed.integrity.bench import Bench, load_json
from autoembed.integrity.outcome import CLEAN, ERROR, FAULT, Row
from autoembed.paths import REPO_ROOT

TRIAL_HOURS = 0.045  # the recipe's own time check leaves it ~40 s of CPU training
LOOP_TIMEOUT_S = 1800  # the resumed loop runs the baseline and the search's prior points, each up to 3 times
FAULT_ROW = "the loop process killed (SIGKILL) mid-score, then --resume"
CLEAN_ROW = "clean loop (search meta-agent, recipe trials in bwrap)"


def loop_killed_mid_score(bench: Bench) -> list[Row]:
    folder = bench.folder("loop")
    run_dir = folder / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "autoembed.loop", "--task", str(bench.task), "--target", "recipe", "--meta", "search",
            "--hours", "0.5", "--trial-hours", str(TRIAL_HOURS), "--sandbox", "bwrap", "--baseline-runs", "1",
            "--max-iterations", "1", "--fast", "--out", str(run_dir)]
    start = time.perf_counter()
    log = open(folder / "loop.log", "w")
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed_trial = None
    try:
        deadline = time.time() + LOOP_TIMEOUT_S
        while time.time() < deadline and proc.poll() is None and killed_trial is None:
            for meta_path in sorted(run_dir.glob("trials/*/meta.json")):
                if (load_json(meta_path) or {}).get("status") == "scoring":
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_trial = meta_path.parent.name
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and killed_trial is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if killed_trial is None:
        reason = f"no trial reached scoring (loop exit {proc.returncode}); see {folder / 'loop.log'}"
        return [Row(FAULT_ROW, FAULT, ERROR, reason, time.perf_counter() - start),
                Row(CLEAN_ROW, CLEAN, ERROR, reason, time.perf_counter() - start)]
    bench.say(f"  [loop] killed the loop while trial {killed_trial} was scoring; resuming")
    resume = subprocess.Popen([sys.executable, "-m", "autoembed.loop", "--resume", str(run_dir)], cwd=REPO_ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        resume.wait(timeout=LOOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # the whole process group: the loop and the trial it runs
        os.killpg(resume.pid, signal.SIGKILL)
        resume.wait()
        reason = f"the resumed loop did not finish in {LOOP_TIMEOUT_S} s; see {folder / 'loop.log'}"
        return [Row(FAULT_ROW, FAULT, ERROR, reason, time.perf_counter() - start),
                Row(CLEAN_ROW, CLEAN, ERROR, reason, time.perf_counter() - start)]
    finally:
        log.close()
    seconds = time.perf_counter() - start
    problems = consistency_problems(run_dir) + _leaked_mounts(run_dir)
    if resume.returncode != 0:
        problems.insert(0, f"--resume exited {resume.returncode} (see {folder / 'loop.log'})")
    rows_after = _ledger_rows(run_dir)
    killed_row = [r for r in rows_after if r.get("trial_id") == killed_trial]
    evidence = {"run_dir": str(run_dir), "killed_trial": killed_trial}
    if problems:
        fault = Row(FAULT_ROW, FAULT, "lost", "; ".join(problems), seconds, evidence)
    else:
        fault = Row(FAULT_ROW, FAULT, "survived",
                    f"killed while trial {killed_trial} was scoring; --resume recorded it "
                    f"({killed_row[0].get('status') if killed_row else 'no row'}: {(killed_row[0].get('reason') or '')[:80] if killed_row else ''}), "
                    f"{len(rows_after)} ledger rows, every trial begun has exactly one row, main is the last kept commit, "
                    "the working tree is clean, no workdir left mounted", seconds, evidence)
    return [fault, _clean_row(run_dir, rows_after, seconds, evidence, killed_trial)]


def _clean_row(run_dir: Path, rows: list[dict], seconds: float, evidence: dict, killed_trial: str) -> Row:
    """No trial of the honest loop flagged, invalid or crashed, save the one the audit killed (the loop records it
    as a crash: the loop stopped during it)."""
    flagged = []
    for trial in sorted(run_dir.glob("trials/*/score.json")):
        score = load_json(trial) or {}
        if score.get("status") != "ok" or score.get("reasons"):
            flagged.append(f"{trial.parent.name}: {score.get('status')} {score.get('reasons')}")
    bad = [f"{r.get('trial_id')}: {r['status']} {r.get('reason')}" for r in rows
           if r.get("status") in ("invalid", "crash") and r.get("trial_id") and r["trial_id"] != killed_trial]
    if flagged or bad:
        return Row(CLEAN_ROW, CLEAN, "flagged", "; ".join(flagged + bad), seconds, evidence)
    if not rows:
        return Row(CLEAN_ROW, CLEAN, "not clean", "the loop left no ledger rows", seconds, evidence)
    statuses = sorted({r["status"] for r in rows})
    return Row(CLEAN_ROW, CLEAN, "clean", f"{len(rows)} ledger rows ({', '.join(statuses)}), every trial scored as "
                                          "its own final_model with no finding", seconds, evidence)


def _leaked_mounts(run_dir: Path) -> list[str]:
    """Trial workdirs still mounted after the loop ended: the killed trial's guard should have released its
    fixed-size workdir (content copied out, image deleted) when the loop died."""
    mounted = [str(p) for p in sorted(run_dir.glob("trials/*/workdir")) if os.path.ismount(p)]
    images = [str(p) for p in sorted(run_dir.glob("trials/*/workdir.img"))]
    return ([f"workdirs still mounted: {mounted}"] if mounted else []) + ([f"images left: {images}"] if images else [])


def _ledger_rows(run_dir: Path) -> list[dict]:
    from autoembed.loop.ledger import Ledger

    return Ledger(run_dir).rows()


def consistency_problems(run_dir: Path) -> list[str]:
    """Where a loop's records disagree: the ledger, the intents it wrote before each step, and its git repository."""
    from autoembed.loop.ledger import Ledger
    from autoembed.loop.meta.repo import TargetRepo

    problems = []
    try:
        rows = Ledger(run_dir).rows()
        intents = [json.loads(line) for line in (run_dir / "intents.jsonl").read_text().splitlines() if line.strip()]
        config = load_json(run_dir / "config.json") or {}
    except (OSError, ValueError) as exc:
        return [f"the loop's records cannot be read: {exc}"]
    row_ids = [r["row_id"] for r in rows]
    if len(row_ids) != len(set(row_ids)):
        problems.append("a ledger row was written twice")
    begun = sorted(i["trial_id"] for i in intents if i["op"] == "trial")
    recorded = sorted(r["trial_id"] for r in rows if r.get("trial_id"))
    if begun != recorded:
        problems.append(f"trials begun {begun} != trials with a row {recorded}")
    from autoembed.loop.config import TARGETS

    filename = TARGETS[config.get("target", "recipe")].filename
    try:
        repo = TargetRepo.open(run_dir / "view" / "repo", filename)
    except Exception as exc:  # noqa: BLE001
        return problems + [f"the loop's git repository cannot be opened: {exc}"]
    refs = repo.candidates()
    for cand in (i for i in intents if i["op"] == "candidate"):
        if refs.get(cand["id"]) != cand["commit"]:
            problems.append(f"candidate {cand['id']}'s ref does not hold its commit")
        mine = [r for r in rows if r.get("candidate") == cand["id"]]
        if not mine or mine[-1]["status"] not in ("keep", "discard", "invalid", "crash", "duplicate"):
            problems.append(f"candidate {cand['id']} was left undecided")
    kept = [r["commit"] for r in rows if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
    baseline = repo.repo.git.rev_list("--max-parents=0", "main")
    if repo.best() != (kept[-1] if kept else baseline):
        problems.append("git's main is not the last kept commit")
    if repo.work_file.read_text() != repo.read(repo.best()):
        problems.append("the working file is not main's")
    if repo.repo.git.status("--porcelain"):
        problems.append("the loop's working tree has uncommitted changes")
    return problems
