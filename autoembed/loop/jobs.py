"""What the loop's planning, running and recording share: a job (one trial to run), a trial's result as the loop
reads it, why a trial does not count, and the scores of a split as a ledger row holds them."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from autoembed.records import read_json

SCORED = ("keep", "discard", "inconclusive")  # statuses of rows whose trial was scored
PROPOSALS_PER_SLOT = 5  # invalid or duplicate proposals tolerated per free slot before the batch runs without it
ALL_TIERS = ("dev", "validation", "heldout")
TRIAL_TIERS = ("dev", "validation")  # what a trial scores; held-out only for the commits the loop keeps (fill_heldout)
HELDOUT_SCORED = "scored: in heldout.jsonl"
HELDOUT_DEFERRED = "deferred: scored only if this commit is kept"
SPOT_SHARE = 0.25  # a spot check's short trial gets this share of a trial's budget
PROPOSAL_FAILURES = 3  # proposals in a row that raise before the loop stops (a bad key, a provider down)
SLOW_SHARE = 0.5  # a trial under this share of the incumbent's median steps (and pairs/s) at its budget is re-run
SLOW_RERUNS = 2  # slow re-runs of one candidate (or of the incumbent's A/A runs) before it is gated on what it has
# Screening (--screen SHARE, the search's candidates only) is successive halving with a tolerance: each candidate
# first runs a short trial of SHARE x --trial-hours, as does the incumbent once (its reference, again whenever the
# incumbent changes). A candidate goes on to a full, gated trial when its screen score is no worse than the
# incumbent's screen score minus SCREEN_MARGIN_SDS x the gate's prior run-to-run sd (a short trial ranks files
# noisily: the margin keeps the near misses); else it is screened out, and the search is told its screen score
# moved onto the full trials' scale (candidate screen - incumbent screen + the incumbent's gated mean).
SCREEN_MARGIN_SDS = 2.0
SCREEN_REFERENCE_CRASHES = 2  # crashed screens of one incumbent before its candidates are promoted unscreened
PACE_TAIL_BYTES = 64 * 1024  # of agent.log read for the training summary block


class LoopError(RuntimeError):
    pass


@dataclass
class Job:
    kind: str  # baseline | remeasure | candidate | rerun | screen
    commit: str
    candidate: int | None = None  # None for the baseline and the incumbent's re-measurements
    trial_id: str = ""
    gpu: str | None = None


@dataclass
class LoadedResult:
    run_dir: Path
    meta: dict
    score: dict | None


@dataclass
class FailedResult:
    error: str
    meta: dict = field(default_factory=dict)
    score: dict | None = None


def was_interrupted(meta: dict) -> bool:
    """Stopped by Ctrl-C or SIGTERM at any stage (before the agent, during it, or while scoring): the trial says
    nothing about its file, which is tried again on --resume."""
    return meta.get("exit_reason") == "interrupted" or str(meta.get("status", "")).startswith("interrupted")


def trial_problem(result) -> str | None:
    """Why a trial does not count as a measurement of its file, or None when it does."""
    if isinstance(result, FailedResult):
        return f"the trial did not start: {result.error.strip().splitlines()[-1]}"
    meta, score = result.meta, result.score
    if meta.get("exit_reason") in ("crashed", "interrupted"):
        detail = (meta.get("exit_detail") or "").strip().splitlines()
        return f"the agent {meta['exit_reason']}" + (f": {detail[-1][:300]}" if detail else "")
    if score is None:
        detail = (meta.get('score_error') or '').strip().splitlines()
        return f"no score ({meta.get('status')})" + (f": {detail[-1][:300]}" if detail else "")
    if score.get("status") != "ok":
        return f"the scorer found the submission {score.get('status')}: {'; '.join(score.get('reasons', []))[:300]}"
    if not (Path(result.run_dir) / "per_query.json.gz").is_file():
        return "the scorer wrote no per_query.json.gz: nothing to gate on"
    return None


def trial_pace(trial_dir: Path) -> dict:
    """A trial's training pace for its row: steps and pairs/s from the summary block its train.py printed last in
    agent.log (the recipe target), and its budget (meta.json hours); None for what it did not report (a harness
    trial, a crash before training). Printed by the candidate's own code, so it can lie: it decides at most
    SLOW_RERUNS re-runs (slow_trial), never a verdict."""
    from autoembed.agents.recipe import parse_summary

    pace = {"steps": None, "pairs_per_s": None, "trial_hours": None}
    meta = read_json(Path(trial_dir) / "meta.json", {})
    hours = meta.get("hours") if isinstance(meta, dict) else None
    pace["trial_hours"] = float(hours) if isinstance(hours, (int, float)) else None
    try:
        with open(Path(trial_dir) / "agent.log", "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(fh.tell() - PACE_TAIL_BYTES, 0))
            summary = parse_summary(fh.read().decode("utf-8", "replace"))
    except OSError:
        return pace
    steps, pairs, seconds = (_number(summary.get(k)) for k in ("steps", "pairs_seen", "train_seconds"))
    pace["steps"] = int(steps) if steps is not None else None
    if pairs is not None and seconds:
        pace["pairs_per_s"] = round(pairs / seconds, 1)
    return pace


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and 0 <= value < 1e12 else None


def slow_trial(pace: dict, reference: list[dict]) -> str | None:
    """Why a trial ran too slow to gate (under SLOW_SHARE of the median steps of the reference rows at its budget,
    and of their pairs/s where both report it), or None."""
    if pace.get("steps") is None:
        return None
    same = [r for r in reference if r.get("steps") is not None and r.get("trial_hours") == pace.get("trial_hours")]
    if not same:
        return None
    steps = statistics.median(r["steps"] for r in same)
    if pace["steps"] >= SLOW_SHARE * steps:
        return None
    rates = [r["pairs_per_s"] for r in same if r.get("pairs_per_s") is not None]
    if pace.get("pairs_per_s") is not None and rates and pace["pairs_per_s"] >= SLOW_SHARE * statistics.median(rates):
        return None  # fewer, larger steps at the same throughput: a bigger batch, not a slow machine
    return (f"trained {pace['steps']} steps, under {SLOW_SHARE:.0%} of the median {steps:g} of the incumbent's "
            f"{len(same)} run(s) at this budget")


def exception_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"


def heldout_entry(score: dict, metric: str) -> dict | None:
    held = split_scores(score, "heldout", metric)
    if held is None:
        return None
    return {"heldout": held, "base_heldout": split_scores(score.get("base", {}), "heldout", metric)}


def split_scores(score: dict, split: str, metric: str) -> dict | None:
    """A split's mean and per-task scores by the task's main metric (the row's "mean" and "tasks")."""
    part = score.get(split)
    if not part:
        return None
    return {"mean": part["mean"][metric], "tasks": {t: row[metric] for t, row in part.get("tasks", {}).items()}}


def gpu_here(slot: str | None, meta: dict) -> str | None:
    """The GPU of this machine that a trial used, for its row and its deferred held-out scoring (which runs here):
    the slot itself without --places; with them the slot is a label ("place:gpu") and the trial's placement record
    says which GPU it had, one of this machine's only on a local place or a unix:// Docker engine."""
    placement = meta.get("placement")
    if not placement:
        return slot
    here = placement.get("kind") == "local" or str(placement.get("url", "")).startswith("unix://")
    return placement.get("gpu") if here else None


def placement_columns(meta: dict) -> dict:
    """Where a placed trial ran, from its meta.json: the place that finished it, its attempts and the places that
    failed it before (with --places the row's gpu is only the slot the loop planned on; the pool picks the place)."""
    placement = meta.get("placement")
    if not placement:
        return {}
    return {"place": placement.get("place"), "place_attempts": placement.get("attempts"),
            "place_failed": [f.get("place") for f in placement.get("failed") or []]}


def mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
