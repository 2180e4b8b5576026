"""What a finished loop run measured: throughput against the ideal, the loop's overhead, and the best commit
against the baseline recipe on the gated split and on held-out, with CIs. Reads the run folder only (this is
for people: it reads held-out, which no meta-agent sees).

    python bench/bench_loop.py traces/loops/<run-id> [--json out.json]

- iterations/hour: candidates proposed per hour of loop wall time; trials/hour against the ideal of
  (slots / trial-hours), every slot always inside a trial's agent budget;
- share of wall time inside trials: the trials' wall time (autoembed.run.run, seeding to score.json)
  over the loop's wall time x slots; the rest is the loop's overhead (proposing, smoke checks, gating);
- best vs baseline: the paired bootstrap and run-to-run noise of autoembed.gate, on the gated split and on
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

from autoembed import gate
from autoembed.ledger import Ledger

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
    return out


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = measure(Path(args.run_dir))
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
