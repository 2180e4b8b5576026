"""A Docker engine lost mid-grid: `autoembed compare --places` over two Docker engines (this machine's and a second
dockerd the case starts, autoembed/integrity/second_engine.py), a 1x1 grid whose loop runs its two A/A baseline
trials side by side, one per engine, each a scripted harness whose one command (submit the base model, then
sleep) takes ~20 s in its container. The
second engine is stopped (SIGTERM, as for maintenance) while that command runs there.

One fault row, survived when nothing is lost and every record agrees: the comparison ends (exit 0) with its report;
the trial caught on the stopped engine was run again on the first one, its meta.json lists both attempts and the
attempt set aside says its place failed; the ledger has exactly one row per trial, naming the place that ran it
and the one that failed it; the cell's report counts the trials per place and the retry alike; the comparison's
leaderboard counts both baseline runs; no container of the grid is left on the first engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autoembed.integrity.bench import Bench, load_json, shell
from autoembed.integrity.outcome import ERROR, FAULT, Row
from autoembed.integrity.second_engine import SecondEngine, engine_problem
from autoembed.paths import REPO_ROOT

ROW = "a Docker engine stopped while its trial runs, mid-grid (compare --places over two engines)"
# lasting, as in the tests: the second engine's copy of the task image is made once per machine, not once per run
ENGINE_ROOT = Path(os.environ.get("AUTOEMBED_AUDIT_ENGINE_ROOT", "/var/tmp/ae-engine2"))
# the base model as the submission (a clean one: scored ok, so the A/A baseline rows are kept), then ~20 s of work
SLOW_COMMAND = ("python3 -c \"import shutil, task; shutil.copytree(task.BASE_MODEL, 'final_model')\" && hostname && "
                "sleep 20")
GRID_TIMEOUT_S = 1500
TRIAL_HOURS = 0.06  # as the audit's other trials: the scripted harness finishes in seconds besides its command


def engine_lost_mid_grid(bench: Bench, engine: SecondEngine | None = None) -> list[Row]:
    """The case, on a second engine of the caller's (a test's) or one it starts and stops itself."""
    from autoembed.sandbox.factory import docker_problem

    problem = docker_problem() or engine_problem()
    if problem:
        return [Row(ROW, FAULT, ERROR, f"cannot run the case: {problem}")]
    own = engine is None
    engine = engine or SecondEngine(ENGINE_ROOT)
    if not engine.running():
        engine.start()
    try:
        return [_grid_with_engine_lost(bench, engine)]
    finally:
        if own:
            engine.stop()


def _grid_with_engine_lost(bench: Bench, engine: SecondEngine) -> Row:
    folder = bench.folder("grid-engine-lost")
    out = folder / "compare"
    script = folder / "slow.task.json"
    script.write_text(json.dumps(shell(SLOW_COMMAND) + [{"text": "Done."}]))
    places = folder / "places.toml"
    first = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    places.write_text(f'[[place]]\nname = "engine1"\nkind = "docker"\nurl = "{first}"\n\n'
                      f'[[place]]\nname = "engine2"\nkind = "docker"\nurl = "{engine.url}"\n')
    argv = [sys.executable, "-m", "autoembed.cli", "compare", "--meta", "search", "--task", f"scripted:{script}",
            "--hours", "0.5", "--trial-hours", str(TRIAL_HOURS), "--repeats", "1", "--baseline-runs", "2",
            "--max-iterations", "0", "--sandbox", "docker", "--bench", str(bench.task), "--places", str(places),
            "--out", str(out)]
    start = time.perf_counter()
    evidence = {"compare": str(out), "log": str(folder / "compare.log")}
    with open(folder / "compare.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            stopped = _stop_engine_during_its_trial(out, engine, proc)
            proc.wait(timeout=GRID_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stopped = stopped if "stopped" in locals() else None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Row(ROW, FAULT, ERROR, f"the comparison did not end in {GRID_TIMEOUT_S} s; see {log.name}",
                       time.perf_counter() - start, evidence)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seconds = time.perf_counter() - start
    if stopped is None:
        return Row(ROW, FAULT, ERROR, f"no trial's command was seen running on engine2 (compare exit {proc.returncode}); "
                                      f"see {folder / 'compare.log'}", seconds, evidence)
    evidence["stopped_during"] = stopped
    problems = ([f"the comparison exited {proc.returncode} (see {folder / 'compare.log'})"] if proc.returncode else [])
    problems += grid_problems(out, stopped)
    if problems:
        return Row(ROW, FAULT, "lost", "; ".join(problems), seconds, evidence)
    return Row(ROW, FAULT, "survived",
               f"engine2 stopped while trial {stopped} ran there; it was run again on engine1 (meta.json: 2 attempts, "
               "the first set aside as place_failed), one ledger row per trial naming engine1 and the failed engine2, "
               "the cell's report and the comparison's leaderboard count both baseline runs, no container left",
               seconds, evidence)


def _stop_engine_during_its_trial(out: Path, engine: SecondEngine, proc: subprocess.Popen) -> str | None:
    """Stop the engine once a trial placed there has started its slow command; that trial's id, or None."""
    deadline = time.time() + GRID_TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        for meta_path in out.glob("cells/*/trials/*/meta.json"):
            meta = load_json(meta_path) or {}
            placed = (meta.get("placement") or {}).get("place")
            trace = meta_path.parent / "trace.jsonl"
            if meta.get("status") == "running" and placed == "engine2" and trace.is_file() \
                    and "sleep 20" in trace.read_text(errors="replace"):
                time.sleep(3)  # the command is under way in the container
                engine.stop()
                return meta_path.parent.name
        time.sleep(0.5)
    return None


def grid_problems(out: Path, stopped: str) -> list[str]:
    """What disagrees or is missing in the comparison's records after the engine was lost (empty: nothing)."""
    problems = []
    cells = sorted(out.glob("cells/*"))
    if len(cells) != 1:
        return [f"expected one cell, found {[c.name for c in cells]}"]
    cell = cells[0]
    rows = [json.loads(line) for line in (cell / "ledger.jsonl").read_text().splitlines() if line.strip()] \
        if (cell / "ledger.jsonl").is_file() else []
    trials = sorted(p.name for p in (cell / "trials").iterdir() if ".attempt" not in p.name) \
        if (cell / "trials").is_dir() else []
    by_trial = {}
    for row in rows:
        by_trial.setdefault(row.get("trial_id"), []).append(row)
    if sorted(t for t in by_trial if t) != trials or any(len(v) != 1 for k, v in by_trial.items() if k):
        problems.append(f"trials {trials} against ledger rows {[(r.get('trial_id'), r['status']) for r in rows]}: "
                        "not exactly one row per trial")
    meta = load_json(cell / "trials" / stopped / "meta.json") or {}
    placement = meta.get("placement") or {}
    failed = [f.get("place") for f in placement.get("failed") or []]
    if meta.get("status") != "scored" or (placement.get("place"), placement.get("attempts"), failed) != \
            ("engine1", 2, ["engine2"]):
        problems.append(f"{stopped}: status {meta.get('status')}, placement {placement.get('place')} after "
                        f"{placement.get('attempts')} attempts, failed on {failed} (expected scored on engine1 after "
                        "2 attempts, engine2 failed)")
    aside = Path((placement.get("failed") or [{}])[0].get("run_dir") or cell / "trials" / f"{stopped}.attempt1")
    aside_meta = load_json(aside / "meta.json") or {}
    if (aside_meta.get("placement") or {}).get("place") != "engine2" or aside_meta.get("status") != "place_failed":
        problems.append(f"the first attempt's folder {aside.name}: status {aside_meta.get('status')}, place "
                        f"{(aside_meta.get('placement') or {}).get('place')} (expected place_failed on engine2)")
    [row] = by_trial.get(stopped) or [{}]
    if (row.get("status"), row.get("place"), row.get("place_failed")) != ("keep", "engine1", ["engine2"]):
        problems.append(f"{stopped}'s ledger row: {row.get('status')} on {row.get('place')}, failed "
                        f"{row.get('place_failed')} (expected keep on engine1, failed engine2)")
    problems += _report_problems(out, cell, rows, stopped)
    problems += _containers_left(out)
    return problems


def _report_problems(out: Path, cell: Path, rows: list[dict], stopped: str) -> list[str]:
    problems = []
    per_place: dict[str, int] = {}
    for row in rows:
        if row.get("place"):
            per_place[row["place"]] = per_place.get(row["place"], 0) + 1
    summary = (cell / "summary.md").read_text() if (cell / "summary.md").is_file() else ""
    expected = [f"{n} trials on {place}" for place, n in sorted(per_place.items())] + \
               ["1 retried after their place failed", f"{stopped}: engine2 failed, ran on engine1"]
    missing = [words for words in expected if words not in summary]
    if missing:
        problems.append(f"the cell's summary.md lacks {missing}")
    report = load_json(out / "report" / "report.json")
    if not report:
        return problems + ["no report/report.json"]
    scored = [r for r in rows if r["kind"] == "baseline" and r["status"] == "keep"]
    board = [r for r in (report.get("leaderboard") or {}).get("rows") or [] if not str(r.get("agent", "")).startswith("anchor")]
    counted = sum(int(r.get("trials") or 0) for r in board)
    if len(scored) != 2 or counted != len(scored):
        problems.append(f"{len(scored)} scored baseline rows in the ledger, {counted} trials on the report's leaderboard "
                        "(expected 2 and 2)")
    return problems


def _containers_left(out: Path) -> list[str]:
    """Containers of this grid (their mounts under its folder) still on the first engine."""
    import docker

    client = docker.from_env()
    left = [c.name for c in client.containers.list(all=True, filters={"label": "autoembed.sandbox=1"})
            if any(str(m.get("Source", "")).startswith(str(out)) for m in c.attrs.get("Mounts") or [])]
    return [f"containers left on engine1: {left}"] if left else []
