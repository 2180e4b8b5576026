"""What a finished loop run measured: throughput against the ideal, the loop's overhead, and the best commit
against the baseline recipe on the gated split and on held-out, with CIs. Reads the run folder only (this is
for people: it reads held-out, which no meta-agent sees).

    python bench/bench_loop.py traces/loops/<run-id> [--json out.json]
    python bench/bench_loop.py --simulate [--trial-s 30] [--iterations 6]   # the loop's own overhead, before/after

--simulate runs the loop twice on one (pretend) GPU with simulated trials of a fixed length (a sleep, then the
scored files tests/loop_driver.py writes) and everything else real: the search meta-agent, commits, the real
smoke check (bwrap, a few CPU steps), the gate, the ledger. Once with prefetch off (the next candidate is proposed
during A/A and re-measurement trials only) and once on (also during a candidate's trial, re-parented if that one
is kept), in the same run, and prints each one's share of wall time inside trials and where the rest went.

- iterations/hour: candidates proposed per hour of loop wall time; trials/hour against the ideal of
  (slots / trial-hours), every slot always inside a trial's agent budget;
- share of wall time inside trials: the trials' wall time (autoembed.trial.run.run, seeding to score.json)
  over the loop's wall time x slots; the rest is the loop's overhead (proposing, smoke checks, gating);
- best vs baseline: the paired bootstrap and run-to-run noise of autoembed.loop.gate, on the gated split and on
  held-out (the per-query scores of all runs of each commit, averaged);
- where the time goes: the loop's wall by phase (trials, record, propose, commit, smoke, heldout, other) and
  the trials' own wall by stage (sandbox, seeding, the agent, scoring);
- measured noise: the run-to-run sd of the mean score and the per-query sd of the difference of two runs of
  one commit (the parameters tests/test_gate.py simulates).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from autoembed.loop import gate
from autoembed.loop.ledger import Ledger

SCORED = ("keep", "discard", "inconclusive")


def per_query(run_dir: Path, trial_id: str) -> dict:
    with gzip.open(run_dir / "trials" / trial_id / "per_query.json.gz", "rt") as fh:
        return json.load(fh)["submission"]


def measure(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    rows = Ledger(run_dir).rows()
    intents = [json.loads(line) for line in (run_dir / "intents.jsonl").read_text().splitlines() if line.strip()]
    sessions = [i for i in intents if i["op"] == "session"]
    starts = [i["epoch"] for i in sessions if i["event"] == "start"]
    stops = [i["epoch"] for i in sessions if i["event"] == "stop"]
    wall = (max(stops) if stops else intents[-1]["epoch"]) - min(starts)
    slots = max(1, len(config.get("gpus") or []))
    trials = [r for r in rows if r.get("trial_id")]
    trial_wall = sum(r.get("wall_s") or 0 for r in trials)
    candidates = {r["candidate"] for r in rows if r.get("candidate")}
    hours = wall / 3600
    out = {
        "run": run_dir.name, "target": config["target"], "meta": config["meta"], "gpus": config.get("gpus"),
        "trial_hours": config["trial_hours"], "wall_s": round(wall, 1), "candidates": len(candidates),
        "trials": len(trials), "statuses": {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}},
        "iterations_per_hour": round(len(candidates) / hours, 2), "trials_per_hour": round(len(trials) / hours, 2),
        "ideal_trials_per_hour": round(slots / config["trial_hours"], 2),
        "share_of_wall_in_trials": round(trial_wall / (wall * slots), 4),
        "mean_trial_wall_s": round(trial_wall / max(len(trials), 1), 1),
    }
    out["loop_phases_s"] = loop_phases(sessions)
    out["inside_trials_s"] = inside_trials(run_dir, trials)
    scored = [r for r in rows if r["status"] in SCORED]
    if not scored:
        return out
    split = scored[0]["gate_split"]
    baseline_commit = next(r["commit"] for r in scored if r["kind"] == "baseline")
    kept = [r for r in rows if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
    best_commit = kept[-1]["commit"] if kept else baseline_commit
    out["gate_split"] = split
    by_commit: dict[str, list[dict]] = {}
    for r in scored:
        by_commit.setdefault(r["commit"], []).append(per_query(run_dir, r["trial_id"]))
    for name in (split, "heldout"):
        # held-out exists for the baseline's and kept commits' runs only (the loop defers it for the others)
        groups = {c: [runs for runs in group if name in runs] for c, group in by_commit.items()}
        groups = {c: group for c, group in groups.items() if group}
        if baseline_commit not in groups or best_commit not in groups:
            out[name] = {"missing": f"no {name} scores for the baseline or the best commit"}
            continue
        means = [[gate.mean_score(runs[name]) for runs in group] for group in groups.values()]
        sd, dof = gate.run_sd(means, 0.0, 0.0) if any(len(m) > 1 for m in means) else (None, 0)
        entry = {"run_sd": sd, "run_sd_dof": dof,
                 "baseline": float(np.mean(means[list(groups).index(baseline_commit)])),
                 "best": float(np.mean(means[list(groups).index(best_commit)])),
                 "baseline_runs": len(groups[baseline_commit]), "best_runs": len(groups[best_commit])}
        aa = [group for group in groups.values() if len(group) > 1]
        if aa:
            arrays = gate.as_arrays([g[name] for g in aa[0]])
            entry["per_query_sd_of_aa_difference"] = float(np.mean([np.std(a[0] - a[1], ddof=1) for a in arrays.values()]))
        if best_commit != baseline_commit:
            verdict = gate.decide([r[name] for r in groups[best_commit]], [r[name] for r in groups[baseline_commit]],
                                  sd if sd is not None else gate.GateConfig().prior_run_sd, gate.GateConfig(max_runs=1))
            entry.update(diff=verdict.diff, ci_95=[verdict.ci_low, verdict.ci_high], se=verdict.se, se_query=verdict.se_query)
        out[name] = entry
    out["best"] = {"commit": best_commit, "description": kept[-1]["description"] if kept else "the baseline"}
    if "diff" in out.get("heldout", {}):
        gpu_hours = wall * slots / 3600
        out["heldout_gain_per_gpu_hour"] = round(out["heldout"]["diff"] / gpu_hours, 4)
    out["screening"] = screening_wall(rows)
    return out


def screening_wall(rows: list[dict]) -> dict | None:
    """What screening cost and saved in measured wall seconds: the screens' own walls, and the full trials the
    screened-out candidates did not run, each at the mean wall of this run's full trials (the report's
    trial-hours figure counts budgets, this one counts what the clock saw)."""
    screens = [r for r in rows if r["kind"] == "screen" and r.get("trial_id")]
    if not screens:
        return None
    full = [r.get("wall_s") or 0 for r in rows if r.get("trial_id") and r["kind"] != "screen"]
    full_wall = sum(full) / max(len(full), 1)
    screen_wall = sum(r.get("wall_s") or 0 for r in screens)
    out = sum(1 for r in screens if r["status"] == "screened_out")
    return {"screens": len(screens), "screened_out": out, "screen_wall_s": round(screen_wall, 1),
            "mean_full_trial_wall_s": round(full_wall, 1), "saved_wall_s": round(out * full_wall - screen_wall, 1)}


def loop_phases(sessions: list[dict]) -> dict:
    """The loop's wall time by phase, summed over its sessions (the stop records' PhaseClock report): what is not
    "trials" is the loop's overhead; "... (during trials)" ran beside the trials and cost no wall time."""
    total: dict[str, float] = {}
    for stop in (s for s in sessions if s["event"] == "stop" and s.get("phases")):
        for phase, seconds in stop["phases"].items():
            if phase != "counts":
                total[phase] = round(total.get(phase, 0.0) + seconds, 2)
    return total


TRIAL_STAGES = ("sandbox_prepare_s", "scorer_prepare_s", "seed_s", "sandbox_start_s", "agent_seconds", "score_seconds")


def inside_trials(run_dir: Path, trials: list[dict]) -> dict:
    """Where a trial's own wall goes (its meta.json stages, summed over the run's trials): the agent's budget
    is the useful part; seeding, sandbox start and scoring are overhead inside the trial."""
    total = {stage: 0.0 for stage in TRIAL_STAGES}
    wall = 0.0
    for row in trials:
        try:
            meta = json.loads((run_dir / "trials" / row["trial_id"] / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        wall += row.get("wall_s") or 0.0
        for stage in TRIAL_STAGES:
            total[stage] += meta.get(stage) or 0.0
    total = {k: round(v, 1) for k, v in total.items()}
    total["other"] = round(wall - sum(total.values()), 1)
    total["wall"] = round(wall, 1)
    return total


def simulate(out: Path, *, trial_s: float, iterations: int, baseline_runs: int, heldout_s: float, smoke: str) -> dict:
    """The loop's overhead on one GPU with fixed-length simulated trials, prefetch off then on."""
    import os
    import time

    from autoembed.loop.engine import Loop, LoopConfig, LoopHooks
    from tests import loop_driver

    def trial(agent_spec, run_out, gpu, say, hours=None, tiers=("dev", "validation", "heldout")):
        time.sleep(trial_s)
        return loop_driver.fake_trial(agent_spec, run_out, gpu, say, tiers=tiers)

    def heldout(trial_dir, gpu, say):
        time.sleep(heldout_s)
        return loop_driver.fake_heldout(trial_dir, gpu, say)

    result = {"trial_s": trial_s, "iterations": iterations, "baseline_runs": baseline_runs, "heldout_s": heldout_s,
              "smoke": smoke, "load_before": os.getloadavg()}
    for prefetch in (False, True):
        run_dir = Path(out) / ("prefetch" if prefetch else "prefetch-off")
        config = LoopConfig(target="recipe", meta="search", hours=10.0, trial_hours=trial_s / 3600,
                            max_iterations=iterations, baseline_runs=baseline_runs, sandbox="auto", gpus=["0"],
                            prefetch=prefetch)
        hooks = LoopHooks(trial_runner=trial, heldout_scorer=heldout,
                          smoke=loop_driver.quick_smoke if smoke == "instant" else None)
        loop = Loop(run_dir, config, say=lambda msg: None, hooks=hooks)
        assert loop.run() == 0, f"the simulated loop in {run_dir} failed"
        m = measure(run_dir)
        result["prefetch" if prefetch else "prefetch_off"] = {
            k: m[k] for k in ("wall_s", "trials", "candidates", "statuses", "share_of_wall_in_trials",
                              "mean_trial_wall_s", "loop_phases_s")}
    result["load_after"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--json", default=None)
    p.add_argument("--simulate", action="store_true", help="measure the loop's own overhead (run_dir: where to put the two loops)")
    p.add_argument("--trial-s", type=float, default=30.0, help="each simulated trial's length (--simulate)")
    p.add_argument("--iterations", type=int, default=6, help="candidates per loop (--simulate)")
    p.add_argument("--baseline-runs", type=int, default=3, help="A/A runs, the GPU loop's default (--simulate)")
    p.add_argument("--heldout-s", type=float, default=0.0, help="seconds a kept candidate's held-out scoring takes (--simulate)")
    p.add_argument("--smoke", choices=("real", "instant"), default="real", help="the real smoke check or none (--simulate)")
    args = p.parse_args(argv)
    if args.simulate:
        import tempfile

        out = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-loop-"))
        result = simulate(out, trial_s=args.trial_s, iterations=args.iterations, baseline_runs=args.baseline_runs,
                          heldout_s=args.heldout_s, smoke=args.smoke)
    elif not args.run_dir:
        p.error("give a loop's run folder, or --simulate")
    else:
        result = measure(Path(args.run_dir))
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
