"""`autoembed compare`: the offline 2x2 grid (search and a scripted meta-agent x two scripted task models, two
repeats) with simulated trials (tests/compare_driver.py), killed with SIGKILL in the middle of a cell's trial,
resumed, and its report's numbers recomputed here from the cells' ledger.jsonl / heldout.jsonl with code of
this test's own (json, numpy, scipy), not the report's."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from autoembed.paths import REPO_ROOT
from tests import compare_driver

SCORED = ("keep", "discard", "inconclusive")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AUTOEMBED_HOME", str(home))
    compare_driver.register_ladder(home)
    return home


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def recompute_cell(cell: Path) -> dict:
    """best - baseline on dev and held-out, each the mean over that commit's scored runs."""
    rows = _jsonl(cell / "ledger.jsonl")
    held = {h["row_id"]: h["heldout"]["mean"] for h in _jsonl(cell / "heldout.jsonl") if h.get("heldout")}
    scored = [r for r in rows if r["status"] in SCORED and r["trial_id"]]
    baseline = [r for r in scored if r["kind"] == "baseline"][0]["commit"]
    kept = [r["commit"] for r in rows if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
    best = kept[-1] if kept else baseline
    out = {}
    for split, value in (("dev", lambda r: r["dev"]["mean"]), ("heldout", lambda r: held[r["row_id"]])):
        means = [np.mean([value(r) for r in scored if r["commit"] == c]) for c in (baseline, best)]
        out[split] = means[1] - means[0]
    return out


def t_interval(xs):
    m, sd = np.mean(xs), np.std(xs, ddof=1)
    half = stats.t.ppf(0.975, len(xs) - 1) * sd / math.sqrt(len(xs))
    return m, m - half, m + half


def table(markdown: str, header_start: str) -> list[list[str]]:
    lines = markdown.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[+-]?\d+\.\d+", cell)]


def test_compare_killed_mid_trial_resumes_and_its_report_is_recomputed_from_the_ledgers(tmp_path, home):
    out = tmp_path / "cmp"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AUTOEMBED_HOME": str(home)}
    killed = subprocess.run([sys.executable, "-m", "tests.compare_driver", str(out), "--kill-after-cells", "3"],
                            env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done = sorted(p.parent.name for p in out.glob("cells/*/done.json"))
    assert len(done) == 3 and not (out / "report").exists()
    cut = [p for p in out.glob("cells/*") if not (p / "done.json").exists()]
    assert len(cut) == 1 and (cut[0] / "intents.jsonl").is_file(), "the fourth cell's loop had begun when it was killed"

    result = compare_driver.run_comparison(out, resume=True)
    assert result.exit_code == 0
    cells = sorted(out.glob("cells/*"))
    assert len(cells) == 8 and all((c / "done.json").is_file() for c in cells)
    cut_rows = _jsonl(cut[0] / "ledger.jsonl")
    assert cut_rows[0]["status"] == "crash" and "loop stopped during this trial" in cut_rows[0]["reason"]
    assert len({r["row_id"] for r in cut_rows}) == len(cut_rows), "a row was written twice across the kill"
    for name in ("report.md", "report.json", "improvement.png", "leaderboard.png"):
        assert (out / "report" / name).stat().st_size > 200, name

    # recompute every pairing's numbers from the ledgers
    report = (out / "report" / "report.md").read_text()
    by_pairing: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        info = json.loads((cell / "cell.json").read_text())
        by_pairing.setdefault((Path(info["meta"].split(":")[-1]).name, Path(info["task_model"].split(":")[-1]).name),
                              []).append({**info, **recompute_cell(cell)})
    rows = table(report, "| meta-agent | task model |")
    assert len(rows) == 4
    for row in rows:
        key = (row[0].split(":")[-1], row[1].split(":")[-1])
        repeats = by_pairing[key]
        assert int(row[3]) == len(repeats) == 2
        for split, mean_col, ci_col in (("dev", 4, 5), ("heldout", 6, 7)):
            m, lo, hi = t_interval([r[split] for r in repeats])
            assert numbers(row[mean_col])[0] == pytest.approx(m, abs=1e-4), (key, split)
            assert numbers(row[ci_col]) == pytest.approx([lo, hi], abs=1e-4), (key, split)
        assert numbers(row[8])[0] == pytest.approx(np.mean([r["heldout"] for r in repeats]) / 0.10, abs=0.01)
    same = by_pairing[("alpha.meta.json", "alpha.task.json")]
    assert all(r["heldout"] > 0.02 for r in same), "the simulated same-family gain was not found"
    # the search's cells are not empty: it turns the harness's knobs, a step from the baseline at a time, and runs them
    for cell in cells:
        if json.loads((cell / "cell.json").read_text())["meta"] == "search":
            cands = [r for r in _jsonl(cell / "ledger.jsonl") if r["kind"] == "candidate"]
            assert cands and all(r["description"].startswith("search (warm start): ") for r in cands), cands
            assert any(r["status"] in SCORED for r in cands), cands

    # the same-vs-cross contrast per repeat, its interval and the exact sign-flip p
    test_rows = {r[0]: r for r in table(report, "| split | repeats |")}
    for split in ("dev", "heldout"):
        diffs = []
        for rep in range(2):
            cellsr = [c for v in by_pairing.values() for c in v if c["repeat"] == rep]
            same_ = [c[split] for c in cellsr if "alpha.meta" in c["meta"] and "alpha.task" in c["task_model"]]
            cross = [c[split] for c in cellsr if not ("alpha.meta" in c["meta"] and "alpha.task" in c["task_model"])]
            diffs.append(np.mean(same_) - np.mean(cross))
        m, lo, hi = t_interval(diffs)
        flips = [abs(np.mean(np.array(s) * diffs)) for s in itertools.product((1, -1), repeat=len(diffs))]
        p = np.mean([f >= abs(np.mean(diffs)) - 1e-12 for f in flips])
        row = test_rows[split]
        assert numbers(row[2])[0] == pytest.approx(m, abs=1e-4)
        assert numbers(row[3]) == pytest.approx([lo, hi], abs=1e-4)
        assert float(row[4]) == pytest.approx(p, abs=1e-3)
    assert "NOT balanced" in report and "smallest p 2 repeats can give is 0.500" in report

    # the leaderboard: every cell's baseline runs per task model, anchored on the ladder
    board = table(report, "| agent | model | trials |")
    assert board[0][0] == "anchor: base model" and board[1][0].startswith("anchor: reference recipe")
    for row in board[2:]:
        task_model = row[1].split(":")[-1]
        values = []
        for cell in cells:
            if json.loads((cell / "cell.json").read_text())["task_model"].endswith(task_model):
                held = {h["row_id"]: h["heldout"]["mean"] for h in _jsonl(cell / "heldout.jsonl")}
                values += [held[r["row_id"]] for r in _jsonl(cell / "ledger.jsonl")
                           if r["kind"] == "baseline" and r["status"] in SCORED]
        assert int(row[2]) == len(values)
        assert numbers(row[4])[0] == pytest.approx(np.mean(values), abs=1e-4)
        assert numbers(row[7])[0] == pytest.approx((np.mean(values) - 0.5) / 0.1, abs=0.01)


def test_compare_refuses_bad_input_with_one_line(tmp_path, capsys):
    from autoembed.cli import main

    places = tmp_path / "places.toml"
    places.write_text('[[place]]\nname = "here"\nkind = "local"\n')
    cases = [(["--meta", "search", "--task", "scripted:x.json"], "--hours"),
             (["--meta", "search", "--task", "search", "--hours", "1"], "'search' is a meta-agent"),
             (["--meta", "search,search", "--task", "scripted:x.json", "--hours", "1"], "lists a name twice"),
             (["--meta", "nosuch:model", "--task", "scripted:x.json", "--hours", "1"], "nosuch"),
             (["--meta", "search", "--task", "scripted:x.json", "--hours", "1", "--agents", "nosuch"], "unknown agent 'nosuch'"),
             (["--meta", "search", "--task", "scripted:x.json", "--hours", "1", "--places", str(tmp_path / "none.toml")],
              "cannot read places"),
             (["--meta", "search", "--task", "scripted:x.json", "--hours", "1", "--places", str(places), "--gpus", "0"],
              "--places and --gpus"),
             (["--resume", str(tmp_path / "nothing")], "no compare.json")]
    for argv, words in cases:
        assert main(["compare", *argv, "--out", str(tmp_path / "out")] if "--resume" not in argv else ["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and words in err, (argv, err)
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(5700)
def test_offline_compare_with_real_scripted_harness_trials_is_killed_resumed_and_reported(tmp_path):
    """The README's offline grid with real trials (scripted harnesses training on the CPU in bwrap, sealed scoring
    of a tiny copy of the task), through the command line: SIGKILL once the first cell is done, --resume, report."""
    import time

    from tests.tiny_task import shared_tiny_task

    task = shared_tiny_task(tmp_path)
    out, examples = tmp_path / "cmp", REPO_ROOT / "examples" / "compare"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AUTOEMBED_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "AUTOEMBED_TRACES": str(tmp_path / "traces")}
    argv = [sys.executable, "-m", "autoembed.cli", "compare", "--meta", f"search,scripted:{examples / 'alpha.meta.json'}",
            "--task", f"scripted:{examples / 'alpha.task.json'},scripted:{examples / 'beta.task.json'}", "--hours", "0.5",
            "--trial-hours", "0.05", "--repeats", "1", "--baseline-runs", "1", "--max-iterations", "1",
            "--sandbox", "bwrap", "--bench", str(task), "--out", str(out)]
    proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while not list(out.glob("cells/*/done.json")) and proc.poll() is None:
        time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([sys.executable, "-m", "autoembed.cli", "compare", "--resume", str(out)], env=env,
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=5400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    mounted = [p for p in out.glob("cells/*/trials/*/workdir") if os.path.ismount(p)]
    assert not mounted and not list(out.glob("cells/*/trials/*/workdir.img")), "the killed trial's workdir leaked"
    report = (out / "report" / "report.md").read_text()
    for row in table(report, "| meta-agent | task model |"):
        cell = next(out.glob(f"cells/{_cell_prefix(row[0])}__{row[1].split(':')[-1]}__r0"))
        rows = _jsonl(cell / "ledger.jsonl")
        if any(r["status"] in SCORED and r["kind"] == "baseline" for r in rows):
            expected = recompute_cell(cell)
            assert numbers(row[4])[0] == pytest.approx(expected["dev"], abs=1e-4)
            assert numbers(row[6])[0] == pytest.approx(expected["heldout"], abs=1e-4)
        else:
            assert row[4] == "n/a"


def _cell_prefix(meta_label: str) -> str:
    return meta_label.split(":")[-1]


def test_compare_through_places_runs_every_trial_there_and_retries_a_dead_engines_trial(tmp_path, home, monkeypatch):
    """`autoembed compare --places FILE` (in this process): every cell's loop and the leaderboard's trial go through
    the real pool and places; only the trial itself is simulated (autoembed.trial.run.run is the one call every place
    makes). The first place is a Docker engine that does not answer: the trial placed there first runs again on a
    local place, and its meta.json, its ledger row and its cell's report say so alike; the cells share one pool, so
    the dead engine is tried once for the whole grid and then takes no more trials."""
    import autoembed.trial.run
    from autoembed.cli import main

    monkeypatch.setattr(autoembed.trial.run, "run", compare_driver.placed_run)
    monkeypatch.setattr(autoembed.trial.run, "_prepare_scorer_once", lambda *args, **kwargs: None)
    monkeypatch.setattr("autoembed.loop.smoke.smoke_check",
                        lambda target, source, sha, workdir, **kw: compare_driver.quick_smoke(target, source, workdir))
    places = tmp_path / "places.toml"
    places.write_text(f'[[place]]\nname = "gone"\nkind = "docker"\nurl = "unix://{tmp_path}/no-engine.sock"\n'
                      '[[place]]\nname = "left"\nkind = "local"\n[[place]]\nname = "right"\nkind = "local"\n')
    out = tmp_path / "cmp"
    grid = compare_driver.GRID
    agent = f"harness:{compare_driver.BASELINE}@{grid['task'][0]}"
    code = main(["compare", "--meta", ",".join(grid["meta"]), "--task", ",".join(grid["task"]), "--hours", "1",
                 "--repeats", "1", "--trial-hours", "0.001", "--max-iterations", "2", "--baseline-runs", "2",
                 "--sandbox", "none", "--agents", agent, "--places", str(places), "--out", str(out)])
    assert code == 0
    assert json.loads((out / "compare.json").read_text())["config"]["places"] == str(places)

    cells = sorted(out.glob("cells/*"))
    assert len(cells) == 4
    retried_in_grid = 0
    for cell in cells:
        assert json.loads((cell / "config.json").read_text())["places"] == str(places)
        rows = {r["trial_id"]: r for r in _jsonl(cell / "ledger.jsonl") if r.get("trial_id")}
        trials = sorted(cell.glob("trials/*"))
        assert sorted(t.name for t in trials) == sorted(rows), "every trial has exactly one ledger row"
        runs_on = {}
        for trial in trials:
            placement = json.loads((trial / "meta.json").read_text())["placement"]
            assert placement["place"] in ("left", "right") and placement["kind"] == "local", placement
            failed = [f["place"] for f in placement["failed"]]
            assert placement["attempts"] == len(failed) + 1 and set(failed) <= {"gone"}
            row = rows[trial.name]
            assert (row["place"], row["place_attempts"], row["place_failed"]) == (placement["place"],
                                                                                  placement["attempts"], failed)
            runs_on[placement["place"]] = runs_on.get(placement["place"], 0) + 1
        retried = [t for t in rows.values() if t["place_failed"] == ["gone"]]
        retried_in_grid += len(retried)
        assert all(r["gpu"] is None and r["gpu_s"] == 0.0 for r in rows.values()), "CPU slots, not the loop's labels"
        summary = (cell / "summary.md").read_text()
        assert all(f"{n} trials on {p}" in summary for p, n in runs_on.items()), summary
        assert f"{len(retried)} retried after their place failed" in summary
    assert retried_in_grid == 1, "the dead engine is tried once, then retired for every cell"
    [board] = [json.loads((t / "meta.json").read_text()) for t in out.glob("agents/*") if (t / "meta.json").exists()]
    assert board["placement"]["place"] in ("left", "right") and board["status"] == "scored"
    assert (out / "report" / "report.md").is_file()


def test_compare_through_places_runs_cells_side_by_side_never_more_trials_than_slots(tmp_path, home, monkeypatch):
    """Two places of one slot each and a 2x2 grid: cells run side by side so both slots are busy (two cells' trials
    overlap in time), yet at no moment do more trials run than the places have slots (one shared pool)."""
    import threading
    import time

    import autoembed.trial.run
    from autoembed.experiments.compare import compare

    running, spans, lock = [], [], threading.Lock()

    def timed_run(agent, *, out, **kwargs):
        cell = Path(out).parent.parent.name
        with lock:
            running.append(cell)
            peak = len(running)
        started = time.monotonic()
        time.sleep(0.15)  # long enough for the other slot's trial to start meanwhile
        try:
            return compare_driver.placed_run(agent, out=out, **kwargs)
        finally:
            with lock:
                running.remove(cell)
                spans.append((cell, started, time.monotonic(), peak))

    monkeypatch.setattr(autoembed.trial.run, "run", timed_run)
    monkeypatch.setattr(autoembed.trial.run, "_prepare_scorer_once", lambda *args, **kwargs: None)
    monkeypatch.setattr("autoembed.loop.smoke.smoke_check",
                        lambda target, source, sha, workdir, **kw: compare_driver.quick_smoke(target, source, workdir))
    places = tmp_path / "places.toml"
    places.write_text('[[place]]\nname = "a"\nkind = "local"\n[[place]]\nname = "b"\nkind = "local"\n')
    out = tmp_path / "cmp"
    result = compare(meta=compare_driver.GRID["meta"], task=compare_driver.GRID["task"], hours=1.0, repeats=1, out=out,
                     trial_hours=0.001, max_iterations=2, baseline_runs=2, sandbox="none", places=str(places),
                     progress=False, say=lambda msg: None, cell_reports=False)
    assert result.exit_code == 0
    assert len(list(out.glob("cells/*/done.json"))) == 4
    trials = list(out.glob("cells/*/trials/*"))
    assert len(spans) == len(trials) >= 8, "every trial ran through the timed run()"
    assert max(peak for *_, peak in spans) <= 2, "more trials ran at once than the places have slots"
    overlapping = [(a, b) for a in spans for b in spans
                   if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, "no two cells' trials ran at the same time: the cells ran one after another"
    per_place = {json.loads((t / "meta.json").read_text())["placement"]["place"] for t in trials}
    assert per_place == {"a", "b"}
    assert (out / "report" / "report.md").is_file()


def test_compare_through_places_killed_with_cells_side_by_side_resumes_them_all(tmp_path, home):
    """kill -9 while cells run side by side on two one-slot places (the real pool; trials simulated): every cell
    that was running resumes from its own records, a finished cell is not run again, and the report's numbers are
    those of the ledgers."""
    places = tmp_path / "places.toml"
    places.write_text('[[place]]\nname = "a"\nkind = "local"\n[[place]]\nname = "b"\nkind = "local"\n')
    out = tmp_path / "cmp"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AUTOEMBED_HOME": str(home)}
    argv = [sys.executable, "-m", "tests.compare_driver", str(out), "--repeats", "1", "--places", str(places)]
    killed = subprocess.run([*argv, "--kill-after-cells", "1"], env=env, capture_output=True, text=True, timeout=600,
                            cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done = {p.parent.name: p.parent for p in out.glob("cells/*/done.json")}
    cut = [p.parent for p in out.glob("cells/*/config.json") if p.parent.name not in done]
    assert 1 <= len(done) < 4 and cut and not (out / "report").exists()
    assert any((c / "intents.jsonl").is_file() for c in cut), "no cell was mid-run when killed"
    finished = {name: (cell / "ledger.jsonl").read_bytes() for name, cell in done.items()}

    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cells = sorted(out.glob("cells/*"))
    assert len(cells) == 4 and all((c / "done.json").is_file() for c in cells)
    assert all((done[n] / "ledger.jsonl").read_bytes() == b for n, b in finished.items()), "a finished cell ran again"
    interrupted = [r for c in cut for r in _jsonl(c / "ledger.jsonl") if r.get("interrupted")]
    assert interrupted and all("loop stopped during this trial" in r["reason"] for r in interrupted)
    for cell in cells:
        rows = _jsonl(cell / "ledger.jsonl")
        assert len({r["row_id"] for r in rows}) == len(rows), f"{cell.name}: a row was written twice across the kill"
        for row in rows:
            if row.get("trial_id") and not row.get("interrupted"):
                assert row["place"] in ("a", "b"), row
    report = (out / "report" / "report.md").read_text()
    for row in table(report, "| meta-agent | task model |"):
        [cell] = [c for c in cells if c.name.startswith(f"{row[0].split(':')[-1]}__{row[1].split(':')[-1]}__")]
        expected = recompute_cell(cell)
        assert numbers(row[4])[0] == pytest.approx(expected["dev"], abs=1e-4), cell.name
        assert numbers(row[6])[0] == pytest.approx(expected["heldout"], abs=1e-4), cell.name


def test_a_cell_that_ends_gives_its_slots_to_a_running_cell_when_no_cell_is_left(tmp_path, monkeypatch):
    """The grid's tail: two one-slot places, two cells; the first cell ends at once, and, no cell being left to
    start, its slot goes to the loop still running (which reads its slot list at every batch)."""
    import time

    import autoembed.experiments.compare as compare_module
    from autoembed.experiments.compare import CompareConfig, GridRun, run_grid_on_places

    places = tmp_path / "places.toml"
    places.write_text('[[place]]\nname = "a"\nkind = "local"\n[[place]]\nname = "b"\nkind = "local"\n')
    config = CompareConfig(metas=["search"], task_models=["x:one", "x:two"], hours=1.0, repeats=1, places=str(places))
    seen = {}

    def fake_cell(cell_dir, cell, config, *, slots, stop, **kwargs):
        seen[cell["cell"]] = [list(slots)]
        if cell["task_model"] == "x:one":
            return 0
        deadline = time.time() + 20
        while len(slots) < 2 and time.time() < deadline and not stop.is_set():
            time.sleep(0.01)
        seen[cell["cell"]].append(list(slots))
        return 0

    monkeypatch.setattr(compare_module, "run_cell", fake_cell)
    assert run_grid_on_places(tmp_path / "cmp", config, GridRun(say=lambda msg: None)) == 0
    (first, [begun, later]) = seen["search__x-one__r0"], seen["search__x-two__r0"]
    assert len(first[0]) == len(begun) == 1 and sorted(later) == ["a:cpu0", "b:cpu0"], seen
