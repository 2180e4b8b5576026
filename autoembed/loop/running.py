"""The loop's running: its trials (side by side over the placement slots, or through a pool of places), the
meta-agent's spot checks, the holds on --max-cost while trials run, the budget's stop, and the held-out scoring
of the runs of kept commits (fill_heldout)."""

from __future__ import annotations

import functools
import os
import secrets
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from autoembed import editable
from autoembed.loop.jobs import (ALL_TIERS, SCORED, SPOT_SHARE, TRIAL_TIERS, FailedResult, Job, exception_text,
                                 heldout_entry, split_scores, trial_problem, was_interrupted)
from autoembed.loop.recording import copy_trial_view
from autoembed.loop.spend import spot_trial_cost
from autoembed.records import read_json


class Running:
    """The trials of a Loop (mixed into engine.Loop, whose _setup gives it trial_runner, pool, slots, _held)."""

    def expected_trial_s(self) -> float:
        """What the next trial will take: its --trial-hours budget, or the mean wall of this run's trials so far
        when that is longer (a trial also seeds, starts its sandbox and is scored: minutes on a CPU)."""
        walls = [r["wall_s"] for r in self.ledger.rows() if r.get("trial_id") and r.get("wall_s") and r["kind"] != "screen"]
        return max(self.config.trial_hours * 3600, sum(walls) / len(walls) if walls else 0.0)

    def _budget_stop(self) -> str | None:
        if self.stop is not None and self.stop.is_set():
            return "interrupted"
        expected = self.expected_trial_s()
        if time.time() + expected > self.deadline:
            return (f"less than one trial left of the loop's budget (a trial takes {expected:.0f} s here: "
                    f"{self.config.trial_hours * 3600:.0f} s of --trial-hours, the rest seeding and scoring)")
        cost, held = self.total_cost(), self.held_usd()
        if self.config.max_cost is not None and cost + held >= self.config.max_cost:
            return (f"spent ${cost:.2f} of --max-cost ${self.config.max_cost:.2f}"
                    + (f", and running trials hold ${held:.2f} of it" if held else ""))
        return None

    @functools.cached_property
    def _task_spec(self):
        from autoembed.task.spec import load_spec

        return load_spec(self.config.task)

    @functools.cached_property
    def _task_usd(self) -> float | None:
        """The task's own cap on one trial's spend ([budget] usd)."""
        return self._task_spec.max_usd

    def _metric_of(self, meta: dict) -> str:
        """The metric a trial's scores are read by: the one its meta.json records, else its task's main metric."""
        recorded = meta.get("main_metric") if isinstance(meta, dict) else None
        return recorded if isinstance(recorded, str) and recorded else self._task_spec.main_metric

    def held_usd(self) -> float:
        with self._held_lock:
            return sum(self._held.values())

    def _hold_budget(self, trial_id: str) -> float | None:
        """The dollar cap of a task-model trial about to start: what --max-cost leaves after the spend so far and
        what the trials and spot checks running beside it hold, at most the task's own [budget] usd. It is held
        until the trial ends, and the meta-agent's gateway is capped at what is left, so trials side by side and
        the meta-agent cannot pass --max-cost together. None: no --max-cost, or a target without a task model."""
        if self.config.max_cost is None or not self.target.uses_task_model:
            return None
        with self._held_lock:
            left = max(self.config.max_cost - self.total_cost() - sum(self._held.values()), 0.0)
            cap = left if self._task_usd is None else min(left, self._task_usd)
            self._held[trial_id] = cap
        self._cap_meta_gateway()
        return cap

    def _release_budget(self, trial_id: str) -> None:
        with self._held_lock:
            self._held.pop(trial_id, None)
        self._cap_meta_gateway()

    def _cap_meta_gateway(self) -> None:
        """The meta-agent's gateway may spend what --max-cost leaves after the trials' spend and holds (its own
        earlier sessions count against it too)."""
        if self.meta_gateway is None or self.config.max_cost is None:
            return
        left = self.config.max_cost - self.trials_cost() - self.spot_cost() - self.held_usd()
        self.meta_gateway.gateway.limits.max_usd = max(left - self.meta_gateway.before["cost_usd"], 0.0)

    def _capped_run(self, trial_id: str, start):
        """start(max_usd kwargs) under a hold of --max-cost; a trial that --max-cost cannot fund is not started."""
        cap = self._hold_budget(trial_id)
        try:
            if cap is not None and cap <= 0.0:
                return FailedResult(f"not started: --max-cost ${self.config.max_cost:.2f} is spent or held by the "
                                     f"trials running beside it")
            return start({"max_usd": cap} if cap is not None and self._runner_caps else {})
        finally:
            self._release_budget(trial_id)

    def trials_cost(self) -> float:
        return sum(r.get("trial_cost_usd") or 0.0 for r in self.ledger.rows())

    def spot_cost(self) -> float:
        """The task model's dollars in the meta-agent's spot checks (short trials, no ledger row), by each one's
        gateway: read from its folder, so a spot trial cut off by a kill counts what its gateway logged."""
        return sum(spot_trial_cost(self.run_dir / "spot" / r["id"]) for r in self.intents() if r["op"] == "spot")

    def total_cost(self) -> float:
        """Dollars spent: every trial's task model and every spot check's, by their gateways' count, and the
        meta-agent's calls for every candidate it proposed."""
        trials = self.trials_cost() + self.spot_cost()
        if getattr(self, "meta_gateway", None) is not None:  # the gateway's count: failed proposals spend too
            return trials + self.meta_gateway.totals()["cost_usd"]
        meta = sum((c.get("meta_usage") or {}).get("cost_usd") or 0.0 for c in self.candidates().values())
        return trials + meta

    def _run_jobs(self, jobs: list[Job]) -> bool:
        for job in jobs:
            self._intend({"op": "trial", "trial_id": job.trial_id, "kind": job.kind, "commit": job.commit,
                          "candidate": job.candidate, "gpu": job.gpu})
        with self.clock("trials"):
            if len(jobs) == 1 and not self._pipelined():
                results = [self._trial(jobs[0])]
            else:
                with ThreadPoolExecutor(len(jobs)) as pool:
                    futures = [pool.submit(self._trial, job) for job in jobs]
                    if self._pipelined():
                        self._prefetching = True
                        try:
                            self._prefetch(len(self.config.gpus), jobs)
                        finally:
                            self._prefetching = False
                    results = [f.result() for f in futures]
        interrupted = False
        with self.clock("record"):
            for job, (result, wall) in zip(jobs, results):
                self._record_contained(job, result, wall)
                interrupted |= result is not None and was_interrupted(result.meta)
        return interrupted

    def _trial(self, job: Job):
        path = self._candidate_file(self.repo.read(job.commit))
        started = time.time()
        label = f"{job.kind}{'' if job.candidate is None else ' ' + str(job.candidate)}"
        hours = {"hours": self.config.trial_hours * self.config.screen} if job.kind == "screen" else {}
        where = f"slot {job.gpu}" if self.pool else f"GPU {job.gpu}" if job.gpu else "CPU"  # a pool's slot is a label
        self.say(f"{job.trial_id}: {label} ({job.commit[:10]}) on {where}")
        try:
            result = self._capped_run(job.trial_id, lambda caps: self.trial_runner(
                self.target.agent_spec(path), self.run_dir / "trials" / job.trial_id, job.gpu,
                lambda msg: self.say(f"{job.trial_id}: {msg}"), **hours, **self._tiers_kw(self._tiers_for(job)), **caps))
        except Exception:  # a trial that cannot even start is a crash of this trial, not of the loop
            return FailedResult(traceback.format_exc()), time.time() - started
        return result, time.time() - started

    def _tiers_kw(self, tiers: tuple[str, ...]) -> dict:
        return {"tiers": tiers} if self._runner_tiers else {}

    @staticmethod
    def _tiers_for(job: Job) -> tuple[str, ...]:
        """The incumbent's runs score held-out in the trial (people compare against them, and one scoring costs
        less than two); a candidate's run defers it until the candidate is kept."""
        return ALL_TIERS if job.kind in ("baseline", "remeasure") else TRIAL_TIERS

    def _run_trial(self, agent_spec: str, out: Path, gpu: str | None, say, hours: float | None = None,
                   tiers: tuple[str, ...] = TRIAL_TIERS, max_usd: float | None = None):
        from autoembed.trial.run import run

        model = self.config.task_model if self.target.name == "harness" else None
        kwargs = dict(task=self.config.task, hours=hours or self.config.trial_hours, sandbox=self.config.sandbox,
                      model=model, out=out, fast=self.config.fast, tiers=tiers, max_usd=max_usd)
        if self.pool:  # the pool picks the free slot (gpu is only its label) and retries elsewhere if a place fails
            from autoembed.placement.pool import trial_result

            return trial_result(self.pool.run_trial({"agent": agent_spec, **kwargs}, say))
        return run(agent_spec, gpus=[gpu] if gpu else None, progress=say, **kwargs)

    def _score_heldout_of_trial(self, trial_dir: Path, gpu: str | None, say) -> dict:
        from autoembed.trial.run import score_deferred

        return score_deferred(trial_dir, task=self.config.task, gpus=[gpu] if gpu else None, progress=say)

    def _spot_check(self, number: int, source: str) -> str:
        """The smoke check, then a short trial (a quarter of a trial's budget) whose dev and validation scores,
        trace and log the meta-agent may read (view/spot/); it is not gated and not a ledger row."""
        if time.time() >= self.deadline:
            return "no spot check: the loop's time (--hours) is up"
        result = self._smoke(number, source)
        if not result.ok:
            return f"failed the smoke check: {result.error}"
        if self._prefetching:
            return "passed the smoke check; no short trial now: the GPUs are running trials"
        if time.time() + self.config.trial_hours * 3600 * (1 + SPOT_SHARE) > self.deadline:
            return "passed the smoke check; no time left in the loop's budget for a short trial"
        spot_id = f"spot-{number:04d}-{secrets.token_hex(2)}"
        path = self._candidate_file(source)
        self._intend({"op": "spot", "id": spot_id, "candidate": number})
        started = time.time()
        try:
            trial = self._capped_run(spot_id, lambda caps: self.trial_runner(
                self.target.agent_spec(path), self.run_dir / "spot" / spot_id, (self.config.gpus or [None])[0],
                lambda msg: self.say(f"{spot_id}: {msg}"), hours=self.config.trial_hours * SPOT_SHARE,
                **self._tiers_kw(TRIAL_TIERS), **caps))
        except Exception:
            trial = FailedResult(traceback.format_exc())
        problem = trial_problem(trial)
        row = {"trial_id": spot_id, "kind": "spot", "status": "crash" if problem else "scored", "reason": problem or "",
               "wall_s": round(time.time() - started, 1)}
        if not problem:
            metric = self._metric_of(trial.meta)
            row.update(validation=split_scores(trial.score, "validation", metric),
                       dev=split_scores(trial.score, "dev", metric))
        copy_trial_view(self.run_dir / "spot" / spot_id, self.view_dir / "spot" / spot_id, row)
        if problem:
            return f"passed the smoke check; the short trial failed: {problem} (see spot/{spot_id}/)"
        scores = ", ".join(f"{split} {row[split]['mean']:.4f}" for split in ("validation", "dev") if row.get(split))
        return (f"passed the smoke check; a short trial ({self.config.trial_hours * SPOT_SHARE * 60:.1f} min, a quarter "
                f"of a real one, so expect lower scores) gave {scores}; trace and log in spot/{spot_id}/")

    def _candidate_file(self, source: str) -> Path:
        """The file a trial runs: content-addressed, read-only, outside the view."""
        files = self.run_dir / "files"
        files.mkdir(exist_ok=True)
        path = files / f"{editable.file_hash(source)[:16]}-{self.target.filename}"
        if not path.is_file():  # written whole, then renamed: trials side by side may ask for one file at once
            tmp = files / f".{path.name}.{secrets.token_hex(4)}"
            tmp.write_text(source)
            tmp.chmod(0o444)
            os.replace(tmp, path)
        return path

    def _heldout_of(self, trial_id: str, gpu: str | None) -> dict:
        """The held-out entry of a scored trial, scoring its deferred held-out tier now if it has one."""
        trial_dir = self.run_dir / "trials" / trial_id
        try:
            score = read_json(trial_dir / "score.json", {})
            if score.get("deferred"):
                with self.clock("heldout"):
                    score = self.heldout_scorer(trial_dir, gpu, lambda msg: self.say(f"{trial_id}: {msg}"))
            return heldout_entry(score, self._metric_of(read_json(trial_dir / "meta.json", {})))
        except Exception as exc:  # recorded in heldout.jsonl (people read it there), never stops the loop or a resume
            self.say(f"{trial_id}: held-out scoring raised {exception_text(exc)}")
            return {"heldout": None, "base_heldout": None, "error": f"held-out scoring raised {exception_text(exc)}"}

    def fill_heldout(self) -> None:
        """Held-out for every scored run of every commit that is or was the incumbent (the baseline, each kept
        candidate), and never for a discarded one; after a kill, what was left out is scored on resume."""
        rows = self.ledger.rows()
        kept = {r["commit"] for r in rows if r["status"] == "keep"} | {self.baseline_commit()}
        have = {h["row_id"] for h in self.ledger.heldout()}
        for row in rows:
            if row["commit"] in kept and row["status"] in SCORED and row["row_id"] not in have:
                self.ledger.add_heldout(row["row_id"], row["commit"], self._heldout_of(row["trial_id"], row.get("gpu")))
                have.add(row["row_id"])
