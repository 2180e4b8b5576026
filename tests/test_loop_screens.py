"""Screening (--screen): the search's candidates run a short trial first; only those within a margin of the
incumbent's screen get a full, gated trial. Trials are simulated (tests/loop_driver.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoembed import editable
from autoembed.loop.config import LoopConfig, new_loop
from autoembed.loop.ledger import Ledger
from autoembed.loop.report import report
from autoembed.paths import REPO_ROOT
from tests import loop_driver

RECIPE = (REPO_ROOT / "harnesses" / "recipe.py").read_text()
BAD = editable.set_knobs(RECIPE, {"LR": 5e-6, "WEIGHT_DEBIAN": 0.25})  # far below the baseline in the simulation
GOOD = editable.set_knobs(RECIPE, {"SYMMETRIC_LOSS": True, "LR": 1e-4})


def files_loop(run_dir: Path, files, screen: float, hours_seen: list | None = None):
    """A loop whose config is the search's (screening applies) and whose proposals are these files, in order."""
    from autoembed.loop.engine import Loop, LoopHooks

    config = LoopConfig(target="recipe", meta="search", hours=1.0, trial_hours=0.001, max_iterations=len(files),
                        baseline_runs=2, remeasure_every=4, sandbox="none", screen=screen)

    def trial(agent_spec, out, gpu, say, hours=None, tiers=("dev", "validation", "heldout")):
        if hours_seen is not None:
            hours_seen.append((out.name, hours))
        return loop_driver.fake_trial(agent_spec, out, gpu, say, tiers=tiers)

    meta = loop_driver.FilesMeta(files)
    return Loop(run_dir, config, meta, lambda msg: None,
                LoopHooks(trial_runner=trial, smoke=loop_driver.quick_smoke, heldout_scorer=loop_driver.fake_heldout)), meta


def test_screening_off_writes_no_screen_rows(tmp_path):
    loop, _ = files_loop(tmp_path / "run", [(BAD, "bad"), (GOOD, "good")], screen=0.0)
    assert loop.run() == 0
    rows = Ledger(tmp_path / "run").rows()
    assert not any(r["kind"] == "screen" or r["status"].startswith("screened") for r in rows)
    assert report(tmp_path / "run", out=lambda text: None)["screening"] is None


def test_a_bad_screen_is_screened_out_and_a_good_one_is_promoted_and_gated(tmp_path):
    hours = []
    loop, meta = files_loop(tmp_path / "run", [(BAD, "bad"), (GOOD, "good")], screen=0.25, hours_seen=hours)
    assert loop.run() == 0
    rows = Ledger(tmp_path / "run").rows()
    screens = [r for r in rows if r["kind"] == "screen"]
    assert [(r["candidate"], r["status"]) for r in screens] == [(None, "screened"), (1, "screened_out"), (2, "screened")]
    assert {h for trial_id, h in hours if trial_id in {r["trial_id"] for r in screens}} == {0.001 * 0.25}
    assert not [r for r in rows if r["candidate"] == 1 and r["kind"] != "screen"], "no full trial, no gate row"
    gated = [r for r in rows if r["candidate"] == 2 and r["kind"] in ("candidate", "rerun")]
    assert gated and gated[-1]["status"] == "keep" and gated[0].get("diff") is not None
    # screens are never kept, never gated, and have no held-out
    held = {h["row_id"] for h in Ledger(tmp_path / "run").heldout()}
    for r in screens:
        assert r["status"] != "keep" and r.get("diff") is None and r["heldout"] is None and r["row_id"] not in held
        score = json.loads((tmp_path / "run" / "trials" / r["trial_id"] / "score.json").read_text())
        assert "heldout" not in score
    assert loop.best_commit() == gated[-1]["commit"]
    # the meta-agent heard the screened-out candidate as a value below the incumbent's, and nothing of a promotion
    told = {f.iteration: f for f in meta.told}
    assert told[1].status == "screened_out" and told[1].value is not None
    baseline = [r["gate_value"] for r in rows if r["kind"] == "baseline"]
    assert told[1].value < sum(baseline) / len(baseline) - screens[1]["screen_margin"]
    assert told[2].status == "keep" and sum(f.iteration == 2 for f in meta.told) == 1

    lines = []
    summary = report(tmp_path / "run", out=lines.append)
    s = summary["screening"]
    assert s == {"screens": 3, "screen_hours": pytest.approx(3 * 0.25 * 0.001), "screened_out": 1, "promoted": 1,
                 "incumbent_screens": 1, "saved_hours": pytest.approx(1 * 0.001 - 3 * 0.25 * 0.001)}
    assert sum(summary["statuses"].values()) == sum(1 for r in rows if r["kind"] in ("candidate", "rerun"))
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "Screening: 3 screens" in text and "1 candidates screened out" in text and "trial-hours saved +0.000" in text
    assert any(line.startswith("Screening:") for line in lines)


@pytest.mark.parametrize("gpus", [[], ["0", "1"]], ids=["cpu", "two-gpus"])
def test_the_search_hears_every_screened_out_candidate(tmp_path, gpus):
    from optuna.trial import TrialState

    loop = loop_driver.make_loop(tmp_path / "run", 8 if gpus else 6, screen=0.3 if not gpus else 0.25, gpus=gpus)
    assert loop.run() == 0
    rows = Ledger(tmp_path / "run").rows()
    assert any(r["status"] == "screened_out" for r in rows) and any(r["status"] == "screened" and r["candidate"] for r in rows)
    states = {t.number: t.state for t in loop.meta.study.get_trials()}
    for number, cand in loop.candidates().items():
        assert states[cand["handle"]["trial_number"]] in (TrialState.COMPLETE, TrialState.FAIL), number
    for r in rows:  # only full trials reach the gate
        assert (r.get("diff") is not None) <= (r["kind"] in ("candidate", "rerun"))


def test_screen_is_validated(capsys):
    with pytest.raises(ValueError, match="--screen"):
        new_loop({"screen": 1.0})
    with pytest.raises(ValueError, match="--screen"):
        new_loop({"screen": -0.1})
    # 30% of a 2-minute trial: 36 s, where the recipe gave up with no model (H100, 2026-12-06); half of it is enough
    with pytest.raises(ValueError, match=r"gives each screen 36 s: .* use --screen 0\.5 or more"):
        new_loop({"screen": 0.3, "trial_hours": 1 / 30})
    assert new_loop({"screen": 0.5, "trial_hours": 1 / 30})[1].screen == 0.5
    with pytest.raises(ValueError, match="screen only trials of more than a minute"):
        new_loop({"screen": 0.9, "trial_hours": 1 / 60})
    from autoembed.cli import main

    assert main(["loop", "--hours", "0.34", "--trial-hours", "0.0333333", "--screen", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "--screen 0.3 of --trial-hours 0.0333333 gives each screen 36 s" in err and len(err.strip().splitlines()) == 1
    assert "use --screen 0.5 or more" in err
    # what bench/gpu_box.sh runs: 0.0333333 h is two minutes, and half of it a minute
    assert new_loop({"screen": 0.5, "trial_hours": 0.0333333})[1].screen == 0.5


def test_a_kill_during_a_screen_then_resume_records_each_screen_once(tmp_path):
    run_dir = tmp_path / "run"
    # trials 1-2: the A/A runs; 3: the incumbent's screen; 4: candidate 1's screen, killed
    proc = subprocess.run([sys.executable, "-m", "tests.loop_driver", str(run_dir), "--kill-at", "trial",
                           "--kill-after", "2", "--iterations", "4", "--screen", "0.25"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    intents = [json.loads(line) for line in (run_dir / "intents.jsonl").read_text().splitlines()]
    cut = [i for i in intents if i["op"] == "trial"][-1]
    assert cut["kind"] == "screen" and cut["candidate"] == 1
    assert loop_driver.make_loop(run_dir, 4, screen=0.25).run() == 0
    rows = Ledger(run_dir).rows()
    assert len({r["row_id"] for r in rows}) == len(rows)
    cut_row = next(r for r in rows if r["trial_id"] == cut["trial_id"])
    assert cut_row["status"] == "crash" and cut_row["interrupted"]
    counted = [r for r in rows if r["kind"] == "screen" and not r.get("interrupted")]
    keys = [(r["candidate"], r["commit"]) for r in counted]
    assert len(keys) == len(set(keys)), keys
    assert any(r["candidate"] == 1 for r in counted), "the cut-off screen ran again after --resume"
