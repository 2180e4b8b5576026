"""The loop's planning: which jobs fill the free slots (A/A baseline runs, re-runs, the incumbent's re-measurement,
new candidates), the meta-agent's proposals, the duplicate and smoke checks a new file passes before its trial,
the prefetch of the next candidates while trials run, and the re-parenting of a candidate onto the incumbent it
will be gated against (the meta-agent's rebase)."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path

from autoembed import editable
from autoembed.loop.jobs import (PROPOSAL_FAILURES, PROPOSALS_PER_SLOT, SCORED, Job, LoopError, exception_text,
                                 mean_or_none)
from autoembed.loop.meta.base import ProposeContext


class Planning:
    """The plan of a Loop (mixed into engine.Loop, whose _setup gives it meta, repo, smoke, clock)."""

    def _iterations_left(self) -> bool:
        return self.config.max_iterations is None or len(self.candidates()) < self.config.max_iterations

    def plan(self, slots: list[str | None]) -> list[Job]:
        """Fill the free slots: A/A baseline runs first, then re-runs and retries, the incumbent's periodic
        re-measurement, then new candidates."""
        jobs: list[Job] = []
        base = self.baseline_commit()
        baseline_rows = [r for r in self.ledger.rows() if r["kind"] == "baseline" and not r.get("interrupted")]
        scored_baseline = [r for r in baseline_rows if r["status"] in SCORED]
        if len(scored_baseline) < self.config.baseline_runs:
            if len(baseline_rows) - len(scored_baseline) >= 2 * self.config.baseline_runs:
                raise LoopError("the baseline crashed again and again; see the ledger's reasons and the trials' agent.log")
            missing = self.config.baseline_runs - len(scored_baseline)
            jobs += [Job("baseline", base) for _ in range(min(missing, len(slots)))]
            if not scored_baseline or len(jobs) == len(slots):  # candidates need a measured incumbent
                return self._assign(jobs, slots)
        candidates = self.candidates()
        fresh: list[Job] = []  # candidates proposed earlier (prefetched while a trial ran) and never run yet
        for number, cand in sorted(candidates.items()):
            if len(jobs) + len(fresh) == len(slots):
                break
            state = self.candidate_state(number)
            if state == "decided":
                continue
            moved = self._contained(Job("candidate", cand["commit"], number), "re-parenting it onto the incumbent",
                                    lambda: self._on_incumbent(number, cand))
            if moved is None:  # its edit does not apply to the new incumbent: recorded; the meta-agent proposes again
                continue
            if state == "rerun" and self.scored_rows(moved["commit"]):  # its file measured already
                jobs.append(Job("rerun", moved["commit"], number))
            else:  # a new file (first run, or merged onto a new incumbent) passes the checks first
                job = self._checked(number, moved)
                if job:
                    fresh.append(job)
        # before new candidates: with prefetch a proposed candidate always waits for the slot, and would starve it
        if len(jobs) < len(slots) and self._remeasure_due():
            jobs.append(Job("remeasure", self.best_commit()))
        jobs += fresh[:len(slots) - len(jobs)]  # one left out waits, checked, for the next plan
        attempts = 0
        while len(jobs) < len(slots) and self._iterations_left() and attempts < PROPOSALS_PER_SLOT * len(slots):
            attempts += 1
            number, cand = self._propose()
            if number is None:
                break
            job = self._checked(number, cand) if cand else None  # None: recorded already (invalid, or a failed proposal)
            if job:
                jobs.append(job)
        return self._assign(self._screens(jobs, len(slots)), slots)

    def _screens(self, jobs: list[Job], free: int) -> list[Job]:
        """With --screen, a candidate not screened yet runs its screen instead of its full trial, and the incumbent
        its reference screen first where it has none (a candidate left out for it waits, checked, for the next plan)."""
        if not self.screening():
            return jobs
        for job in jobs:
            if job.kind == "candidate" and self.needs_screen(job.candidate):
                job.kind = "screen"
        if any(j.kind == "screen" for j in jobs) and self.screen_reference_due():
            jobs = [Job("screen", self.best_commit())] + jobs[:free - 1]
        return jobs

    def _assign(self, jobs: list[Job], slots: list[str | None]) -> list[Job]:
        trial_count = sum(1 for r in self.intents() if r["op"] == "trial")
        for i, (job, gpu) in enumerate(zip(jobs, slots)):
            job.gpu = gpu
            job.trial_id = f"trial-{trial_count + i + 1:04d}"
        return jobs

    def _remeasure_due(self) -> bool:
        rows = [r for r in self.ledger.rows() if r.get("trial_id") and r["kind"] != "screen"]
        best = self.best_commit()
        last = max((i for i, r in enumerate(rows) if r["commit"] == best), default=-1)
        return len(rows) - 1 - last >= self.config.remeasure_every

    @property
    def trial_device(self) -> str | None:
        """Where trials run: "gpu", "cpu", or None when the places mix machines with and without GPUs."""
        if self.pool is None:
            return "gpu" if self.config.gpus else "cpu"
        kinds = {"gpu" if place.gpus else "cpu" for place in self.pool.places}
        return kinds.pop() if len(kinds) == 1 else None

    def _propose(self) -> tuple[int | None, dict | None]:
        number = len(self.candidates()) + 1
        best = self.best_commit()
        self.repo.set_best(best)
        incumbent = self.repo.read(best)
        before = self._meta_usage()
        ctx = ProposeContext(iteration=number, incumbent_source=incumbent, view_dir=self.view_dir,
                             spot_check=lambda source: self._spot_check(number, source), device=self.trial_device,
                             deadline=self.deadline, trial_seconds=self.config.trial_hours * 3600,
                             main_metric=self._main_metric())
        self._write_view()
        failure = None
        try:
            with self.clock("propose"):
                proposal = self.meta.propose(ctx)
        except Exception as exc:  # retries are the LLM client's: what reaches here is this proposal's failure
            if self.meta_gateway is not None and self.meta_gateway.gateway.stopped_by in ("max_usd", "deadline"):
                self.repo.checkout_best()  # --max-cost or --hours reached mid-proposal: the budget stop, proposal dropped
                self.say(f"the meta-agent's gateway refused its call at its {self.meta_gateway.gateway.stopped_by}; "
                         f"proposal {number} dropped")
                return None, None
            failure, proposal = exc, None
        self.repo.checkout_best()  # an LLM meta-agent edits the working file; the candidate lives on its ref
        if proposal is None and failure is None:
            return None, None
        if failure is not None:  # recorded as this candidate's crash (the incumbent's file, unchanged, on its ref)
            source, problem = incumbent, f"the meta-agent's proposal raised {exception_text(failure)}"
            description, handle, hypothesis = f"(the proposal failed: {type(failure).__name__})", {}, ""
        else:
            source, problem = _storable(proposal.source)
            description, handle = _one_line(proposal.description), _plain(proposal.handle)
            hypothesis = _one_line(getattr(proposal, "hypothesis", ""), empty="")
        with self.clock("commit"):
            try:
                sha = self.repo.add_candidate(number, source, description, best)
            except Exception as exc:  # git refused what it was given: the candidate is recorded on the incumbent's file
                failure = failure or exc
                source, problem = incumbent, f"committing the proposal raised {exception_text(exc)}"
                description = f"(the proposal could not be committed: {type(exc).__name__})"
                sha = self.repo.add_candidate(number, source, description, best)
        after = self._meta_usage()
        usage = {k: (after.get(k) or 0) - (before.get(k) or 0) for k in after}
        cand = {"op": "candidate", "id": number, "commit": sha, "parent": best, "description": description,
                "hypothesis": hypothesis or None, "handle": handle, "file_hash": editable.file_hash(source), "meta_usage": usage}
        if failure is not None:
            cand["failed"] = True  # its file is the incumbent's: no later candidate is a duplicate of it
        self._intend(cand)
        self.say(f"candidate {number}: {description}")
        if failure is not None:
            self._append_row(Job("candidate", sha, number), "crash", reason=problem, extra={"error": type(failure).__name__})
            self._proposal_failures += 1
            if self._proposal_failures >= PROPOSAL_FAILURES:
                raise LoopError(f"the meta-agent's last {PROPOSAL_FAILURES} proposals failed; the last one: {problem}")
            return number, None
        self._proposal_failures = 0
        if problem:  # no text a trial could run: decided now, no smoke check
            self._append_row(Job("candidate", sha, number), "invalid", reason=problem)
            return number, None
        return number, cand

    def _on_incumbent(self, number: int, cand: dict, trial: tuple[Job, dict] | None = None) -> dict | None:
        """The candidate built on the incumbent it will be measured against: itself if it is, else re-parented onto
        it (a new commit on its ref, its intent re-written; the meta-agent's rebase: the search sets the knobs it
        turned in the new file, an LLM's edit is merged in three ways; then the meta-agent hears the file that will
        be measured). None when the edit does not apply there: an
        `invalid` row says so (it spent no trial; a `crash` row for the `trial` that measured it before the
        incumbent moved) and the meta-agent is told."""
        best = self.best_commit()
        if cand["parent"] == best:
            return cand
        kept = next((c for c in self.candidates().values() if c["commit"] == best), None)
        label = f"candidate {kept['id']}" if kept else best[:10]
        source, best_source = self.repo.read(cand["commit"]), self.repo.read(best)
        with self.clock("reparent"):
            moved = self.meta.rebase(source, self.repo.read(cand["parent"]), best_source)
        if moved is None or moved == best_source:
            why = "does not merge onto" if moved is None else "is in"
            self.say(f"candidate {number}: built on {cand['parent'][:10]}, {why} {label}; not run")
            edit = (f"its edit does not merge onto {label} (conflict)" if moved is None
                    else f"its edit is in {label} already: nothing left to measure")
            reason = (f"the incumbent changed while this trial ran (built on the one before {label}); {edit}" if trial
                      else f"built on the incumbent before {label}, which was kept while this candidate waited; {edit}"
                      ) + ": propose again on the new incumbent"
            job, common = trial or (Job("candidate", cand["commit"], number), {})
            self._append_row(job, "crash" if trial else "invalid", reason=reason,
                             extra={**common, "reparent_conflict": best})
            return None
        with self.clock("commit"):
            sha = self.repo.commit(moved, cand["description"], best)
        self.meta.reparented(cand.get("handle") or {}, moved)
        new = {**cand, "commit": sha, "parent": best, "file_hash": editable.file_hash(moved),
               "reparented_from": cand["commit"], "same_file": moved == source}
        self._intend(new)
        self.repo.move_candidate(number, sha, cand["commit"])
        self.say(f"candidate {number}: re-parented onto {label} ({'the same file' if new['same_file'] else 'merged'})")
        return new

    def _main_metric(self) -> str | None:
        try:
            return self._task_spec.main_metric
        except Exception:  # a task that does not load fails its trials, not the proposal
            return None

    def _meta_usage(self) -> dict:
        """The meta-agent's spend so far: by its gateway's count when the loop runs one, else its client's."""
        return self.meta_gateway.totals() if self.meta_gateway is not None else dict(self.meta.usage)

    def _checked(self, number: int, cand: dict) -> Job | None:
        return self._contained(Job("candidate", cand["commit"], number), "checking this candidate",
                               lambda: self._checked_job(number, cand))

    def _checked_job(self, number: int, cand: dict) -> Job | None:
        """A trial job for a candidate that passes the duplicate and smoke checks, else its row and None."""
        earlier = [c for n, c in self.candidates().items()
                   if n < number and c["file_hash"] == cand["file_hash"] and not c.get("failed")]
        source = self.repo.read(cand["commit"])
        same_as = earlier[0]["commit"] if earlier else None
        if same_as is None and editable.file_hash(self.repo.read(self.baseline_commit())) == cand["file_hash"]:
            same_as = self.baseline_commit()
        if same_as is not None:
            rows = self.scored_rows(same_as)
            value = mean_or_none([r["gate_value"] for r in rows]) if rows else None
            label = "the baseline" if same_as == self.baseline_commit() else f"candidate {earlier[0]['id']}"
            self._append_row(Job("candidate", cand["commit"], number), "duplicate",
                             reason=f"the same file as {label} ({same_as[:10]}); not run again",
                             extra={"duplicate_of": same_as, "gate_value": value})
            return None
        if self._smoked_ok(number, cand["file_hash"]):
            return Job("candidate", cand["commit"], number)
        result = self._smoke(number, source)
        if result.ok:
            self._intend({"op": "smoked", "id": number, "file_hash": cand["file_hash"], "seconds": round(result.seconds, 2)})
        else:
            self._append_row(Job("candidate", cand["commit"], number), "invalid", reason=result.error,
                             extra={"smoke_s": round(result.seconds, 2)})
            return None
        return Job("candidate", cand["commit"], number)

    def _smoke(self, number: int, source: str):
        """The smoke check's result; one that raises is a failed check that names the exception."""
        from autoembed.loop.smoke import SmokeResult

        workdir = self.run_dir / "smoke" / f"{number:04d}-{secrets.token_hex(2)}"
        started = time.time()
        try:
            with self.clock("smoke"):
                return self.smoke(self.target.name, source, workdir)
        except Exception as exc:
            return SmokeResult(False, f"the smoke check raised {exception_text(exc)}", time.time() - started)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _smoke_check(self, target: str, source: str, workdir: Path):
        from autoembed.loop.smoke import smoke_check

        return smoke_check(target, source, self.target.adapter_sha256(), workdir, sandbox=self.config.sandbox,
                           task=self.config.task)

    def _pipelined(self) -> bool:
        """Propose and smoke-check the next candidates while GPU trials run, for a meta-agent that says it may
        (pipelined: the search, whose Optuna study knows which trials are running; the LLM, which reads the
        ledger as it stands). Never on CPU trials: the smoke check would take CPU time from a trial with a fixed
        budget."""
        return bool(self.config.gpus) and getattr(self.meta, "pipelined", False)

    def _prefetch(self, count: int, running: list[Job]) -> None:
        """Propose and smoke-check until `count` candidates wait for the next trials, so each is ready when a GPU
        frees. A proposal made now takes the incumbent of the moment as its parent; if a running candidate is
        kept, plan() re-parents it onto the new incumbent before its trial (_on_incumbent), and the merge it would
        get there is smoke-checked now too. With prefetch off, a running candidate counts as waiting, so the next
        one is proposed during A/A and re-measurement trials only (the behaviour before re-parenting)."""
        busy = {j.candidate for j in running if j.candidate is not None} if self.config.prefetch else set()
        may_keep = [j for j in running if j.kind in ("candidate", "rerun")]
        ready = sum(1 for n, c in self.candidates().items()
                    if n not in busy and self.candidate_state(n) == "pending" and self._smoked_ok(n, c["file_hash"]))
        for _ in range(PROPOSALS_PER_SLOT * count):
            if ready >= count or not self._iterations_left() or self._budget_stop():
                break
            number, cand = self._propose()
            if number is None:
                break
            ready += cand is not None and self._checked(number, cand) is not None
        if self.config.prefetch:
            self._presmoke_merges(busy, may_keep)

    def _presmoke_merges(self, busy: set[int], may_keep: list[Job]) -> None:
        """Smoke-check now what a waiting candidate becomes if a running one is kept, when that changes its file
        (an LLM's edit merged onto the kept one, the search's knob step set in it), so a keep costs the next trial
        no smoke check."""
        for number, cand in self.candidates().items():
            if number in busy or self.candidate_state(number) != "pending":
                continue
            source, parent = self.repo.read(cand["commit"]), self.repo.read(cand["parent"])
            for job in may_keep:
                try:
                    merged = self.meta.rebase(source, parent, self.repo.read(job.commit))
                except Exception:  # plan() re-parents it for real if this one is kept, and records what that raises
                    continue
                if merged is None or merged == source or self._smoked_ok(number, editable.file_hash(merged)):
                    continue
                result = self._smoke(number, merged)
                if result.ok:
                    self._intend({"op": "smoked", "id": number, "file_hash": editable.file_hash(merged),
                                  "seconds": round(result.seconds, 2), "merged_onto": job.commit})

    def _smoked_ok(self, number: int, file_hash: str) -> bool:
        """This file of this candidate passed the smoke check (records before re-parenting name no file)."""
        return any(r["op"] == "smoked" and r["id"] == number and r.get("file_hash", file_hash) == file_hash
                   for r in self.intents())


def _storable(source) -> tuple[str, str | None]:
    """(text to commit, why it cannot be a candidate or None): a proposal that is not UTF-8 text (lone surrogates,
    what invalid bytes decode to) or is over the size cap is committed as it is, escaped where needed, and
    recorded invalid at once."""
    if not isinstance(source, str):
        return "", f"the proposal is not text ({type(source).__name__}): propose the whole file as text"
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (source.encode("utf-8", "backslashreplace").decode("utf-8"),
                f"the proposal is not UTF-8 text ({exc.reason} at character {exc.start}): write plain text")
    try:
        editable.check_size(source, "the proposal")
    except editable.EditableError as exc:
        return source, str(exc)
    return source, None


def _one_line(text, empty: str = "(no description)") -> str:
    """A description (or hypothesis) as git keeps it: one printable line of at most 200 characters."""
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    text = "".join(c if c.isprintable() else " " for c in text).encode("utf-8", "backslashreplace").decode("utf-8")
    return " ".join(text.split())[:200].rstrip() or empty


def _plain(handle) -> dict:
    """The meta-agent's bookkeeping as JSON can keep it (it goes into intents.jsonl)."""
    try:
        return json.loads(json.dumps(handle if isinstance(handle, dict) else {}, default=str))
    except (TypeError, ValueError, RecursionError):
        return {}
