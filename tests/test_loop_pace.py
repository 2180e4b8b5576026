"""A trial's pace in its ledger row, and a trial that trained far fewer steps than the incumbent's runs (a loaded
machine) re-run instead of gated, up to jobs.SLOW_RERUNS times per candidate. Simulated trials (tests/loop_driver.py)
with an agent.log that ends in train.py's summary block."""

from __future__ import annotations

from pathlib import Path

from autoembed.loop.jobs import SLOW_RERUNS, slow_trial, trial_pace
from autoembed.loop.ledger import Ledger
from tests import loop_driver


def summary_block(steps: int, pairs_per_s: float = 100.0, seconds: float = 60.0) -> str:
    return (f"[train 1.0s] step 1 | loss 0.5\n---\nstop_reason: budget\nsteps: {steps}\n"
            f"pairs_seen: {int(pairs_per_s * seconds)}\ntrain_seconds: {seconds}\ndevice: cpu\n")


def run_loop(run_dir: Path, steps_of) -> list[dict]:
    from autoembed.loop.engine import Loop, LoopConfig, LoopHooks

    config = LoopConfig(target="recipe", meta="search", hours=1.0, trial_hours=0.001, max_iterations=1,
                        baseline_runs=2, remeasure_every=50, sandbox="none")
    count = {"n": 0}

    def trial(agent_spec, out, gpu, say, hours=None, tiers=("dev", "validation", "heldout")):
        count["n"] += 1
        result = loop_driver.fake_trial(agent_spec, out, gpu, say, tiers=tiers)
        steps = steps_of(count["n"])
        (out / "agent.log").write_text(summary_block(steps, pairs_per_s=steps))  # a slow machine: fewer pairs/s too
        return result

    Loop(run_dir, config, say=lambda msg: None, hooks=LoopHooks(trial_runner=trial, smoke=loop_driver.quick_smoke,
                                                                heldout_scorer=loop_driver.fake_heldout)).run()
    return Ledger(run_dir).rows()


def test_a_slow_trial_is_rerun_not_gated_and_every_row_has_its_pace(tmp_path):
    rows = run_loop(tmp_path / "loop", lambda n: 20 if n == 3 else 100)  # the candidate's first trial ran slow
    trials = [r for r in rows if r["trial_id"]]
    slow = next(r for r in trials if r["trial_id"] == "trial-0003")
    assert slow["status"] == "crash" and slow["slow"] and slow["interrupted"], slow
    assert slow["reason"].startswith("re-run, not gated: trained 20 steps") and slow.get("diff") is None
    later = [r for r in trials if r["candidate"] == 1 and r["trial_id"] > "trial-0003"]
    assert later and later[0]["status"] in ("keep", "discard", "inconclusive"), later
    assert all(r["steps"] in (20, 100) and r["pairs_per_s"] in (20.0, 100.0) for r in trials), trials


def test_a_candidate_slow_every_time_is_gated_after_its_reruns_with_a_note(tmp_path):
    rows = run_loop(tmp_path / "loop", lambda n: 100 if n <= 2 else 30)  # every candidate trial: a slower file
    mine = [r for r in rows if r["candidate"] == 1 and r["trial_id"]]
    assert [r["status"] for r in mine[:SLOW_RERUNS]] == ["crash"] * SLOW_RERUNS and all(r["slow"] for r in mine[:SLOW_RERUNS])
    gated = mine[SLOW_RERUNS]
    assert gated["status"] in ("keep", "discard", "inconclusive") and gated["slow_gated"], gated
    assert f"gated all the same after {SLOW_RERUNS} slow re-runs" in gated["reason"]


def test_pace_of_a_trial_without_a_summary_and_a_bigger_batch():
    here = Path(__file__).parent / "no-such-trial"
    assert trial_pace(here) == {"steps": None, "pairs_per_s": None, "trial_hours": None}  # the harness target: None
    runs = [{"steps": 100, "pairs_per_s": 50.0, "trial_hours": 0.05}, {"steps": 110, "pairs_per_s": 55.0, "trial_hours": 0.05}]
    assert slow_trial({"steps": 30, "pairs_per_s": 50.0, "trial_hours": 0.05}, runs) is None  # fewer, larger steps
    assert slow_trial({"steps": 30, "pairs_per_s": 15.0, "trial_hours": 0.05}, runs).startswith("trained 30 steps")
    assert slow_trial({"steps": 30, "pairs_per_s": 15.0, "trial_hours": 0.1}, runs) is None  # another budget
