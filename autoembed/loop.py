"""The meta-loop: a meta-agent improves one editable file; code, not a prompt, keeps or reverts each edit.

    python -m autoembed.loop --hours 24                       # search meta-agent on the recipe (no key needed)
    python -m autoembed.loop --hours 24 --target harness --meta anthropic:claude-opus-4-5 \\
        --task-model anthropic:claude-sonnet-4-6 --trial-hours 0.5 --gpus 0
    python -m autoembed.loop --resume traces/loops/<run-id>

Each iteration: propose -> commit (a ref per candidate) -> smoke check (invalid: no trial) -> duplicate check
-> trial(s) through autoembed.run.run -> gate -> one ledger row per trial; the branch head is the best commit.
On GPUs the next candidates are proposed, committed and smoke-checked while the trials run, so a freed GPU waits
for no proposal; one built on an incumbent that a running candidate then replaced is re-parented onto the new
incumbent before it is run or gated (the meta-agent's rebase), so each row's parent is what it was gated against.
The run folder traces/loops/<run-id>/ holds everything: config.json, the write-ahead intents.jsonl, the
ledger, the target's git repository and the meta-agent's view (view/), the trials (trials/<trial-id>/).

Held-out is for people, so it is scored only where they read it: the incumbent's runs (the A/A baselines, the
re-measurements) score it in the trial, a candidate's trial defers it (score.json "deferred"), and a kept
candidate's runs get it right after the keep (run.score_deferred on the frozen model). A discarded candidate's
held-out is never scored; its row says "heldout": "deferred: ...". --hours is the wall time of the loop's own
work once the scorer is prepared: proposing, smoke checks, trials (seeding, training, scoring), the gate and
the held-out of kept steps; a trial starts only if its expected wall (the run's mean so far) still fits.

Resume after a kill at any point: intents are written before each step takes effect (a candidate's commit,
a trial's start) and ledger rows carry unique ids, so replaying a step is idempotent. A trial that had
finished when the loop died is recorded from its folder; one that had not is recorded as a crash and its
candidate is tried again.

Nothing a candidate holds stops the loop: an exception while proposing, checking (the smoke check, re-parenting),
gating or scoring held-out becomes that candidate's row (invalid or crash, naming the exception), written before
anything else, so no --resume meets it again. One loop per run folder: loop.lock there is flock'ed for the loop's
life, and a second loop exits 2 naming the first's pid. --max-cost counts the gateways' spend only (trials, spot
checks, the meta-agent), never the usage an agent reports of itself.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import gzip
import inspect
import json
import math
import os
import secrets
import shutil
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from autoembed import bounded, editable, gate, textsafe
from autoembed.ledger import Ledger
from autoembed.meta.base import Feedback, MetaAgent, ProposeContext
from autoembed.meta.repo import TargetRepo
from autoembed.paths import REPO_ROOT, traces_dir
from autoembed.sandbox.identity import forbid_shared_writes

SCORED = ("keep", "discard", "inconclusive")  # statuses of rows whose trial was scored
PROPOSALS_PER_SLOT = 5  # invalid or duplicate proposals tolerated per free slot before the batch runs without it
DEFAULT_TASK_MODEL = "anthropic:claude-sonnet-4-6"
ALL_TIERS = ("dev", "validation", "heldout")
TRIAL_TIERS = ("dev", "validation")  # what a trial scores; held-out only for the commits the loop keeps (fill_heldout)
HELDOUT_SCORED = "scored: in heldout.jsonl"
HELDOUT_DEFERRED = "deferred: scored only if this commit is kept"
SPOT_SHARE = 0.25  # a spot check's short trial gets this share of a trial's budget
# A/A runs on a CPU: one. Each costs minutes there, and the gate stays within its false-keep rate on the prior
# run-to-run sd alone (tests/test_gate.py simulates the fast subsets with one baseline run); the incumbent's
# periodic re-measurement adds repeats as the loop goes.
CPU_BASELINE_RUNS = 1
META_TOKEN_ENV = "AUTOEMBED_META_TOKEN"  # the gateway's token for the meta-agent (never written to config.json)
PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
_PREPARE_LOCK = threading.Lock()
PROPOSAL_FAILURES = 3  # proposals in a row that raise before the loop stops (a bad key, a provider down)
LOCK_NAME = "loop.lock"  # in the run folder, flock'ed for the loop's life: one loop per run folder


@dataclass(frozen=True)
class Target:
    name: str
    baseline: Path
    filename: str

    @property
    def uses_task_model(self) -> bool:
        """Its trials call a task model through their gateway (and so spend against --max-cost)."""
        return self.name == "harness"

    def adapter_sha256(self) -> str:
        if self.name == "recipe":
            from autoembed.agents.recipe import FIXED_ADAPTER_SHA256
        else:
            from autoembed.agents.harness import FIXED_ADAPTER_SHA256
        return FIXED_ADAPTER_SHA256

    def agent_spec(self, path: Path) -> str:
        return f"{self.name}:{path}"


TARGETS = {"recipe": Target("recipe", REPO_ROOT / "harnesses" / "recipe.py", "recipe.py"),
           "harness": Target("harness", REPO_ROOT / "harnesses" / "baseline.py", "harness.py")}


@dataclass
class Job:
    kind: str  # baseline | remeasure | candidate | rerun
    commit: str
    candidate: int | None = None  # None for the baseline and the incumbent's re-measurements
    trial_id: str = ""
    gpu: str | None = None


@dataclass
class LoopConfig:
    target: str = "recipe"
    meta: str = "search"
    task_model: str | None = None
    task: str = "embed"
    hours: float = 1.0
    trial_hours: float = 0.05
    max_cost: float | None = None
    max_iterations: int | None = None
    gpus: list[str] = field(default_factory=list)
    places: str | None = None  # a TOML file of places (autoembed.placement.config): candidates fill all their slots
    sandbox: str = "auto"
    fast: bool | None = None
    baseline_runs: int = 3  # A/A runs of the baseline at the start: the first estimate of run-to-run noise
    # (3, not 2: with 2 the gate keeps ~81% of true +0.01 improvements in tests/test_gate.py's simulation, with 3 ~89%)
    remeasure_every: int = 6  # trials between re-measurements of the incumbent
    seed: int = 0
    meta_base_url: str | None = None  # a gateway of the user's own for the LLM meta-agent (token from META_TOKEN_ENV);
    # without it the loop starts its own (autoembed.meta.gateway)
    prefetch: bool = True  # on GPUs, propose and smoke-check the next candidates while any trial runs, re-parenting
    # them if that trial is kept; False: only while the incumbent cannot change (A/A, re-measurement), which costs a
    # proposal and a smoke check between trials (bench/bench_loop.py --simulate compares the two)


class Loop:
    def __init__(self, run_dir: Path, config: LoopConfig, meta_agent: MetaAgent | None = None, say=None, *,
                 trial_runner=None, smoke=None, heldout_scorer=None, pool=None, slots=None, stop=None):
        """trial_runner(agent_spec, out, gpu, say, hours=None, tiers=...) -> a result with run_dir, meta, score
        (default: autoembed.run.run, held-out deferred);
        pool: a placement Pool shared with other loops (default: one of config.places' own); slots: the slot labels
        this loop plans its parallel candidates over (default: every slot of the pool, or config.gpus), a list read
        again at each batch, to which a grid adds the slots of cells that ended; stop: an
        Event that, once set, ends the loop between trials as an interruption (a grid running loops side by side);
        smoke(target, source, workdir) -> SmokeResult (default: autoembed.smoke.smoke_check);
        heldout_scorer(trial_dir, gpu, say) -> the trial's score.json with held-out (default:
        autoembed.run.score_deferred). Tests swap them."""
        self.run_dir = Path(run_dir)
        self.config = config
        forbid_shared_writes()  # the ledger, the repository and every trial folder: not writable by other users
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.meta_gateway = None
        self._lock_file = lock_run_folder(self.run_dir)  # before anything is written: a second loop here exits 2
        try:
            self._setup(config, meta_agent, say, trial_runner, smoke, heldout_scorer, pool, slots, stop)
        except BaseException:
            self.close()
            raise

    def _setup(self, config, meta_agent, say, trial_runner, smoke, heldout_scorer, pool, slots, stop) -> None:
        tmp = self.run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(config.__dict__, indent=2))
        os.replace(tmp, self.run_dir / "config.json")
        self.target = TARGETS[config.target]
        # the meta-agent's descriptions and the trials' lines are model-written: no control character reaches a terminal
        self.say = textsafe.escaping(say or (lambda msg: print(f"[loop] {msg}", file=sys.stderr, flush=True)))
        self.ledger = Ledger(self.run_dir)
        self.intents_path = self.run_dir / "intents.jsonl"
        self.view_dir = self.run_dir / "view"
        self.repo = self._open_repo()
        self.meta_gateway = None if meta_agent else start_meta_gateway(config, self.run_dir, self.trials_cost() + self.spot_cost())
        self.meta = meta_agent or make_meta_agent(config, self.run_dir, self.meta_gateway)
        self.gate_config = gate.GateConfig(seed=config.seed)
        self._prefetching = False  # the GPUs are busy with trials: a spot check may not start a short trial
        self._proposal_failures = 0  # proposals in a row that raised
        self._per_query: dict[str, dict] = {}
        self.clock = PhaseClock()
        self._lock = threading.Lock()
        self.deadline = time.time() + config.hours * 3600
        self.trial_runner = trial_runner or self._run_trial
        if pool is None and config.places:
            from autoembed.placement.config import load_pool  # only a loop on places needs docker/submitit

            pool = load_pool(config.places, self.say)
        self.pool = pool
        self.slots = slots or None
        self.stop = stop
        self.smoke = smoke or self._smoke_check
        self.heldout_scorer = heldout_scorer or self._score_heldout_of_trial
        # a runner without a tiers argument (an older simulation) scores every tier, as run() does by default
        self._runner_tiers = "tiers" in inspect.signature(self.trial_runner).parameters
        self._runner_caps = "max_usd" in inspect.signature(self.trial_runner).parameters
        self._held: dict[str, float] = {}  # trial or spot id -> the dollar cap it holds of --max-cost while it runs
        self._held_lock = threading.Lock()

    # -- setup ------------------------------------------------------------------------------------

    def _open_repo(self) -> TargetRepo:
        path = self.view_dir / "repo"
        if (path / ".git").is_dir():
            return TargetRepo.open(path, self.target.filename)
        source = self.target.baseline.read_text()
        editable.check_adapter(source, self.target.adapter_sha256(), str(self.target.baseline))
        if path.exists():  # a kill during creation: start the repository again
            shutil.rmtree(path)
        return TargetRepo.create(path, self.target.filename, source, f"baseline: {self.target.baseline.name}")

    def _prepare(self) -> None:
        """The scorer's one-time preparation on this machine (minutes the first time), before the budget starts,
        as a trial does before its agent's clock."""
        from autoembed.run import _prepare_scorer_once
        from autoembed.task.spec import load_spec

        with _PREPARE_LOCK:  # loops side by side (a grid on places): one prepares, the others find it prepared
            _prepare_scorer_once(load_spec(self.config.task), self.config.fast, self.config.gpus[:1] or None, self.say)

    # -- records ----------------------------------------------------------------------------------

    def intents(self) -> list[dict]:
        from autoembed.ledger import _drop_partial_last_line, _read_jsonl

        _drop_partial_last_line(self.intents_path)
        return _read_jsonl(self.intents_path)

    def _intend(self, record: dict) -> None:
        from autoembed.ledger import _append_jsonl

        with self._lock:
            _append_jsonl(self.intents_path, {"time": _now(), "epoch": round(time.time(), 3), **record})

    def candidates(self) -> dict[int, dict]:
        return {r["id"]: r for r in self.intents() if r["op"] == "candidate"}

    def baseline_commit(self) -> str:
        return self.repo.repo.git.rev_list("--max-parents=0", "refs/heads/main").splitlines()[0]

    def best_commit(self) -> str:
        """The last kept commit in the ledger (the baseline before any keep)."""
        best = self.baseline_commit()
        for row in self.ledger.rows():
            if row["status"] == "keep" and row["kind"] in ("candidate", "rerun"):
                best = row["commit"]
        return best

    def scored_rows(self, commit: str) -> list[dict]:
        """The scored runs of this commit, and of the commits it was re-parented from with the file unchanged
        (the same file measured, before its incumbent moved)."""
        same = self._same_file_commits(commit)
        return [r for r in self.ledger.rows() if r["commit"] in same and r["status"] in SCORED]

    def _same_file_commits(self, commit: str) -> set[str]:
        same = {commit}
        for record in reversed(self.intents()):
            if record["op"] == "candidate" and record["commit"] in same and record.get("reparented_from") \
                    and record.get("same_file"):
                same.add(record["reparented_from"])
        return same

    def candidate_state(self, number: int) -> str:
        """pending (needs a smoke check and a trial) | rerun (inconclusive) | decided."""
        rows = [r for r in self.ledger.rows() if r.get("candidate") == number]
        if not rows:
            return "pending"
        last = rows[-1]
        if last["status"] == "inconclusive":
            return "rerun"
        if last["status"] == "crash" and last.get("interrupted"):
            return "pending" if len(rows) == 1 else "rerun"
        return "decided"

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the meta-agent's gateway (if this loop started one), saving its totals beside its log; then let
        another loop have the run folder."""
        try:
            if self.meta_gateway is not None:
                self.meta_gateway.stop()
                self.meta_gateway = None
        finally:
            lock, self._lock_file = getattr(self, "_lock_file", None), None
            if lock is not None:
                lock.close()  # closing the file releases its flock

    def _run(self) -> int:
        if self.trial_runner == self._run_trial:
            self._prepare()
        self.deadline = time.time() + self.config.hours * 3600  # the loop's budget starts once the machine is ready
        if self.meta_gateway is not None:  # no meta-agent call goes out, or goes on, past --hours
            self.meta_gateway.gateway.limits.deadline = self.deadline
        self._write_view()
        self.replay()
        self._intend({"op": "session", "event": "start", "gpus": self.config.gpus, "hours": self.config.hours})
        self.clock = PhaseClock()
        try:
            while True:
                stop = self._budget_stop()
                slots = list(self.slots or (self.pool.slot_labels() if self.pool else (self.config.gpus or [None])))
                proposed = len(self.candidates())
                jobs = [] if stop else self.plan(slots)
                if not jobs and len(self.candidates()) > proposed and self._iterations_left():
                    continue  # every proposal was decided without a trial (invalid, duplicate): propose again
                if not jobs:
                    stop = stop or self._budget_stop() or (  # a spent --max-cost can end a proposal half-way
                        "the meta-agent has nothing more to propose" if self._iterations_left()
                        else f"reached --max-iterations {self.config.max_iterations}")
                    break
                if self._run_jobs(jobs):
                    stop = "interrupted"
                    break
        except KeyboardInterrupt:  # between trials (proposing, a smoke check): --resume continues from the records
            stop = "interrupted"
        except LoopError as exc:
            self.say(f"stopping: {exc}")
            self._intend({"op": "session", "event": "stop", "reason": str(exc), "phases": self.clock.report()})
            raise
        self.say(f"stopping: {stop}")
        self._intend({"op": "session", "event": "stop", "reason": stop, "phases": self.clock.report()})
        if stop == "interrupted":
            return 130
        self._write_view()
        self.say(f"done: best commit {self.best_commit()[:10]}; ledger {self.ledger.path}")
        return 0

    def replay(self) -> None:
        """Bring the records into agreement after a kill: trials begun but not recorded, the branch head, the
        meta-agent's view of decided candidates."""
        recorded = {r["row_id"] for r in self.ledger.rows()}
        for intent in self.intents():
            if intent["op"] != "trial" or intent["trial_id"] in recorded:
                continue
            job = Job(intent["kind"], intent["commit"], intent.get("candidate"), intent["trial_id"], intent.get("gpu"))
            trial_dir = self.run_dir / "trials" / job.trial_id
            meta = _read_json(trial_dir / "meta.json")
            if meta.get("status") == "scored" and (trial_dir / "score.json").is_file():
                self.say(f"resume: recording trial {job.trial_id}, which finished before the loop stopped")
                self._record_contained(job, _LoadedResult(trial_dir, meta, _read_json(trial_dir / "score.json")), None)
            else:
                self.say(f"resume: trial {job.trial_id} was cut off by the stop ({meta.get('status', 'not started')})")
                self._append_row(job, "crash", reason=f"the loop stopped during this trial ({meta.get('status', 'not started')})",
                                 extra={"interrupted": True})
        self.repo.set_best(self.best_commit())
        for number, cand in self.candidates().items():  # a kill between a re-parent's intent and its ref
            self.repo.move_candidate(number, cand["commit"], cand.get("reparented_from") or cand["commit"])
        self.fill_heldout()
        for number, cand in self.candidates().items():
            rows = [r for r in self.ledger.rows() if r.get("candidate") == number]
            if rows and self.candidate_state(number) == "decided":
                self._tell(cand, rows[-1])

    def expected_trial_s(self) -> float:
        """What the next trial will take: its --trial-hours budget, or the mean wall of this run's trials so far
        when that is longer (a trial also seeds, starts its sandbox and is scored: minutes on a CPU)."""
        walls = [r["wall_s"] for r in self.ledger.rows() if r.get("trial_id") and r.get("wall_s")]
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
    def _task_usd(self) -> float | None:
        """The task's own cap on one trial's spend ([budget] usd)."""
        from autoembed.task.spec import load_spec

        return load_spec(self.config.task).max_usd

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
                return _FailedResult(f"not started: --max-cost ${self.config.max_cost:.2f} is spent or held by the "
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
        return self._assign(jobs, slots)

    def _assign(self, jobs: list[Job], slots: list[str | None]) -> list[Job]:
        trial_count = sum(1 for r in self.intents() if r["op"] == "trial")
        for i, (job, gpu) in enumerate(zip(jobs, slots)):
            job.gpu = gpu
            job.trial_id = f"trial-{trial_count + i + 1:04d}"
        return jobs

    def _remeasure_due(self) -> bool:
        rows = [r for r in self.ledger.rows() if r.get("trial_id")]
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
                             deadline=self.deadline)
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
            source, problem = incumbent, f"the meta-agent's proposal raised {_exception_text(failure)}"
            description, handle = f"(the proposal failed: {type(failure).__name__})", {}
        else:
            source, problem = _storable(proposal.source)
            description, handle = _one_line(proposal.description), _plain(proposal.handle)
        with self.clock("commit"):
            try:
                sha = self.repo.add_candidate(number, source, description, best)
            except Exception as exc:  # git refused what it was given: the candidate is recorded on the incumbent's file
                failure = failure or exc
                source, problem = incumbent, f"committing the proposal raised {_exception_text(exc)}"
                description = f"(the proposal could not be committed: {type(exc).__name__})"
                sha = self.repo.add_candidate(number, source, description, best)
        after = self._meta_usage()
        usage = {k: (after.get(k) or 0) - (before.get(k) or 0) for k in after}
        cand = {"op": "candidate", "id": number, "commit": sha, "parent": best, "description": description,
                "handle": handle, "file_hash": editable.file_hash(source), "meta_usage": usage}
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
        it (a new commit on its ref, its intent re-written; the meta-agent's rebase: the search sets its knob values
        in the new file, an LLM's edit is merged in three ways). None when the edit does not apply there: an
        `invalid` row says so (it spent no trial; a `crash` row for the `trial` that measured it before the
        incumbent moved) and the meta-agent is told."""
        best = self.best_commit()
        if cand["parent"] == best:
            return cand
        kept = next((c for c in self.candidates().values() if c["commit"] == best), None)
        label = f"candidate {kept['id']}" if kept else best[:10]
        source = self.repo.read(cand["commit"])
        with self.clock("reparent"):
            moved = self.meta.rebase(source, self.repo.read(cand["parent"]), self.repo.read(best))
        if moved is None:
            self.say(f"candidate {number}: built on {cand['parent'][:10]}, does not merge onto {label}; not run")
            reason = (f"built on the incumbent before {label}, which was kept while this candidate waited or ran; its edit "
                      f"does not merge onto {label} (conflict): propose again on the new incumbent")
            job, common = trial or (Job("candidate", cand["commit"], number), {})
            self._append_row(job, "crash" if trial else "invalid", reason=reason,
                             extra={**common, "reparent_conflict": best})
            return None
        with self.clock("commit"):
            sha = self.repo.commit(moved, cand["description"], best)
        new = {**cand, "commit": sha, "parent": best, "file_hash": editable.file_hash(moved),
               "reparented_from": cand["commit"], "same_file": moved == source}
        self._intend(new)
        self.repo.move_candidate(number, sha, cand["commit"])
        self.say(f"candidate {number}: re-parented onto {label} ({'the same file' if new['same_file'] else 'merged'})")
        return new

    def _meta_usage(self) -> dict:
        """The meta-agent's spend so far: by its gateway's count when the loop runs one, else its client's."""
        return self.meta_gateway.totals() if self.meta_gateway is not None else dict(self.meta.usage)

    def _contained(self, job: Job, what: str, fn, status: str = "invalid"):
        """fn(); or, when it raises, the candidate's row (status, the exception's type and message), written before
        anything else, and None. A candidate's file can make the loop's own code raise (a compiler's recursion limit,
        a merge tool, a parser); it decides that candidate, never the loop, nor every --resume after it."""
        try:
            return fn()
        except Exception as exc:
            self._append_row(job, status, reason=f"{what} raised {_exception_text(exc)}",
                             extra={"error": type(exc).__name__})
            return None

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
            value = _mean([r["gate_value"] for r in rows]) if rows else None
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
        from autoembed.smoke import SmokeResult

        workdir = self.run_dir / "smoke" / f"{number:04d}-{secrets.token_hex(2)}"
        started = time.time()
        try:
            with self.clock("smoke"):
                return self.smoke(self.target.name, source, workdir)
        except Exception as exc:
            return SmokeResult(False, f"the smoke check raised {_exception_text(exc)}", time.time() - started)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _smoke_check(self, target: str, source: str, workdir: Path):
        from autoembed.smoke import smoke_check

        return smoke_check(target, source, self.target.adapter_sha256(), workdir, sandbox=self.config.sandbox,
                           task=self.config.task)

    def _run_trial(self, agent_spec: str, out: Path, gpu: str | None, say, hours: float | None = None,
                   tiers: tuple[str, ...] = TRIAL_TIERS, max_usd: float | None = None):
        from autoembed.run import run

        model = self.config.task_model if self.target.name == "harness" else None
        kwargs = dict(task=self.config.task, hours=hours or self.config.trial_hours, sandbox=self.config.sandbox,
                      model=model, out=out, fast=self.config.fast, tiers=tiers, max_usd=max_usd)
        if self.pool:  # the pool picks the free slot (gpu is only its label) and retries elsewhere if a place fails
            from autoembed.placement import trial_result

            return trial_result(self.pool.run_trial({"agent": agent_spec, **kwargs}, say))
        return run(agent_spec, gpus=[gpu] if gpu else None, progress=say, **kwargs)

    def _score_heldout_of_trial(self, trial_dir: Path, gpu: str | None, say) -> dict:
        from autoembed.run import score_deferred

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
            trial = _FailedResult(traceback.format_exc())
        problem = _trial_problem(trial)
        row = {"trial_id": spot_id, "kind": "spot", "status": "crash" if problem else "scored", "reason": problem or "",
               "wall_s": round(time.time() - started, 1)}
        if not problem:
            row.update(validation=_split_scores(trial.score, "validation"), dev=_split_scores(trial.score, "dev"))
        _copy_trial_view(self.run_dir / "spot" / spot_id, self.view_dir / "spot" / spot_id, row)
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
                interrupted |= result is not None and _interrupted(result.meta)
        return interrupted

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
        (an LLM's edit merged onto the kept one; the search's knob values give the same file), so a keep costs
        the next trial no smoke check."""
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

    def _trial(self, job: Job):
        path = self._candidate_file(self.repo.read(job.commit))
        started = time.time()
        label = f"{job.kind}{'' if job.candidate is None else ' ' + str(job.candidate)}"
        where = f"slot {job.gpu}" if self.pool else f"GPU {job.gpu}" if job.gpu else "CPU"  # a pool's slot is a label
        self.say(f"{job.trial_id}: {label} ({job.commit[:10]}) on {where}")
        try:
            result = self._capped_run(job.trial_id, lambda caps: self.trial_runner(
                self.target.agent_spec(path), self.run_dir / "trials" / job.trial_id, job.gpu,
                lambda msg: self.say(f"{job.trial_id}: {msg}"), **self._tiers_kw(self._tiers_for(job)), **caps))
        except Exception:  # a trial that cannot even start is a crash of this trial, not of the loop
            return _FailedResult(traceback.format_exc()), time.time() - started
        return result, time.time() - started

    def _tiers_kw(self, tiers: tuple[str, ...]) -> dict:
        return {"tiers": tiers} if self._runner_tiers else {}

    @staticmethod
    def _tiers_for(job: Job) -> tuple[str, ...]:
        """The incumbent's runs score held-out in the trial (people compare against them, and one scoring costs
        less than two); a candidate's run defers it until the candidate is kept."""
        return ALL_TIERS if job.kind in ("baseline", "remeasure") else TRIAL_TIERS

    # -- recording and gating ---------------------------------------------------------------------

    def _record_contained(self, job: Job, result, wall_s: float | None) -> None:
        """record(); when gating or recording raises, the trial's row is a crash naming the exception."""
        self._contained(job, "gating and recording this trial", lambda: self.record(job, result, wall_s), status="crash")

    def record(self, job: Job, result, wall_s: float | None) -> None:
        meta = result.meta if result is not None else {}
        score = getattr(result, "score", None)
        cost, tokens = gateway_spend(meta)
        gpu = _gpu_here(job.gpu, meta)
        common = {"trial_cost_usd": cost, "tokens": tokens,
                  "wall_s": round(wall_s, 1) if wall_s is not None else None,
                  "gpu": gpu, "gpu_s": round(wall_s, 1) if wall_s is not None and gpu else 0.0,
                  **_placement_columns(meta)}
        problem = _trial_problem(result)
        if problem:  # an interrupted trial says nothing about its file: its candidate is tried again
            interrupted = _interrupted(meta)
            self._append_row(job, "crash", reason=problem, extra={**common, "interrupted": interrupted or None})
            return
        if job.candidate is not None and not self._measured_on_incumbent(job, common):
            return
        per_query = self._load_per_query(job.trial_id)
        split = "validation" if "validation" in per_query["submission"] else "dev"
        value = gate.mean_score(per_query["submission"][split])
        scores = {"validation": _split_scores(score, "validation"), "dev": _split_scores(score, "dev"),
                  "gate_split": split, "gate_value": value, **common}
        if job.kind in ("baseline", "remeasure"):  # the incumbent's runs: people compare held-out against them
            heldout = self._heldout_of(job.trial_id, gpu)
            self._append_row(job, "keep", reason="A/A baseline run" if job.kind == "baseline" else "incumbent re-measured",
                             extra={**scores, "heldout": HELDOUT_SCORED}, heldout=heldout)
            return
        verdict, split = self._gate(job, split)
        scores.update(gate_split=split, gate_value=gate.mean_score(per_query["submission"][split]))
        heldout = _heldout_entry(score)  # present only when the trial scored it anyway (never asked to defer)
        self._append_row(job, verdict.outcome, reason=verdict.reason, heldout=heldout,
                         extra={**scores, "diff": verdict.diff, "ci_low": verdict.ci_low, "ci_high": verdict.ci_high,
                                "runs": verdict.runs_candidate, "incumbent_runs": verdict.runs_incumbent,
                                "se": verdict.se, "se_query": verdict.se_query, "run_sd": verdict.run_sd,
                                "heldout": HELDOUT_SCORED if heldout or verdict.outcome == "keep" else HELDOUT_DEFERRED})
        if verdict.outcome == "keep":
            self.repo.set_best(job.commit)
            self.fill_heldout()

    def _measured_on_incumbent(self, job: Job, common: dict) -> bool:
        """Whether the candidate's trial measured a file built on the incumbent it is now gated against. Side by
        side on several GPUs another candidate may be kept first: this one is re-parented onto it, and if its file
        is unchanged (the search's knob values) the trial counts, with job.commit moved to the new commit; if the
        merge changed the file, the trial measured no candidate of the new incumbent, so its row says so and the
        merged file is tried again (or, when the edit does not merge, the row says that). False: the row is written."""
        cand = self.candidates()[job.candidate]
        ran = editable.file_hash(self.repo.read(job.commit))
        moved = self._on_incumbent(job.candidate, cand, trial=(job, common))
        if moved is None:
            return False
        if moved["file_hash"] == ran:
            job.commit = moved["commit"]
            return True
        self._append_row(job, "crash", reason=f"the incumbent changed while this trial ran; its edit, merged onto the new "
                                              f"incumbent, is another file ({moved['commit'][:10]}), tried again",
                         extra={**common, "interrupted": True})
        return False

    def _heldout_of(self, trial_id: str, gpu: str | None) -> dict:
        """The held-out entry of a scored trial, scoring its deferred held-out tier now if it has one."""
        trial_dir = self.run_dir / "trials" / trial_id
        try:
            score = _read_json(trial_dir / "score.json")
            if score.get("deferred"):
                with self.clock("heldout"):
                    score = self.heldout_scorer(trial_dir, gpu, lambda msg: self.say(f"{trial_id}: {msg}"))
            return _heldout_entry(score)
        except Exception as exc:  # recorded in heldout.jsonl (people read it there), never stops the loop or a resume
            self.say(f"{trial_id}: held-out scoring raised {_exception_text(exc)}")
            return {"heldout": None, "base_heldout": None, "error": f"held-out scoring raised {_exception_text(exc)}"}

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

    def _gate(self, job: Job, split: str) -> tuple[gate.Verdict, str]:
        """The verdict, on validation when every run on both sides has it, else on dev (recorded in the row)."""
        incumbent = self.best_commit()
        cand_rows = self.scored_rows(job.commit) + [{"trial_id": job.trial_id}]
        inc_rows = self.scored_rows(incumbent)
        if any(split not in self._load_per_query(r["trial_id"])["submission"] for r in cand_rows + inc_rows):
            split = "dev"
        groups: dict[str, list[float]] = {}  # run-to-run noise: the mean scores of every commit's runs on this split
        for row in [r for r in self.ledger.rows() if r["status"] in SCORED] + [{"commit": job.commit, **cand_rows[-1]}]:
            runs = self._load_per_query(row["trial_id"])["submission"]
            if split in runs:
                groups.setdefault(row["commit"], []).append(gate.mean_score(runs[split]))
        noise, _ = gate.run_sd(list(groups.values()), self.gate_config.prior_run_sd, self.gate_config.prior_dof)
        cand = [self._load_per_query(r["trial_id"])["submission"][split] for r in cand_rows]
        inc = [self._load_per_query(r["trial_id"])["submission"][split] for r in inc_rows]
        return gate.decide(cand, inc, noise, self.gate_config), split

    def _load_per_query(self, trial_id: str) -> dict:
        if trial_id not in self._per_query:
            path = self.run_dir / "trials" / trial_id / "per_query.json.gz"
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                self._per_query[trial_id] = json.load(fh)
        return self._per_query[trial_id]

    def _append_row(self, job: Job, status: str, *, reason: str, extra: dict | None = None,
                    heldout: dict | None = None) -> None:
        cand = self.candidates().get(job.candidate) if job.candidate is not None else None
        first_row = cand is not None and not any(r.get("candidate") == job.candidate for r in self.ledger.rows())
        meta_usage = (cand or {}).get("meta_usage", {}) if first_row else {}
        row = {"row_id": job.trial_id or f"candidate-{job.candidate:04d}-{status}", "trial_id": job.trial_id or None,
               # the baseline is iteration 0 even when candidate 1 was proposed while it ran (prefetch)
               "iteration": job.candidate if job.candidate is not None else (
                   0 if job.kind == "baseline" else len(self.candidates())),
               "candidate": job.candidate, "kind": job.kind, "commit": job.commit,
               "parent": (cand or {}).get("parent"), "target": self.target.name, "meta": self.config.meta,
               "task_model": self.config.task_model if self.target.name == "harness" else None,
               "status": status, "reason": reason, "description": (cand or {}).get("description", job.kind),
               "gpu": job.gpu, "time": _now(), "meta_tokens": (meta_usage.get("input_tokens") or 0) + (meta_usage.get("output_tokens") or 0),
               "meta_cost_usd": meta_usage.get("cost_usd"), **(extra or {})}
        row["cost_usd"] = (row.get("trial_cost_usd") or 0.0) + (row["meta_cost_usd"] or 0.0)
        with self._lock:
            added = self.ledger.append(row, heldout=heldout)
        if not added:
            return
        shown = f" {row['gate_split']} {row['gate_value']:.4f}" if row.get("gate_value") is not None and status != "duplicate" else ""
        diff = f" diff {row['diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" if row.get("diff") is not None else ""
        self.say(f"{row['row_id']}: {job.kind} {status}{shown}{diff}: {reason.splitlines()[0] if reason else ''}")
        if cand is not None and status != "inconclusive" and not row.get("interrupted"):
            self._tell(cand, row)
        self._write_view()

    def _tell(self, cand: dict, row: dict) -> None:
        """The meta-agent hears a decided candidate's outcome; its bookkeeping failing is its own, not the loop's."""
        try:
            self.meta.observe(self._feedback(cand, row))
        except Exception as exc:
            self.say(f"candidate {cand['id']}: the meta-agent's observe() raised {_exception_text(exc)}")

    def _feedback(self, cand: dict, row: dict) -> Feedback:
        rows = self.scored_rows(cand["commit"])
        value = _mean([r["gate_value"] for r in rows]) if rows else row.get("gate_value")
        if row["status"] in ("invalid", "crash"):
            value = None
        return Feedback(cand["id"], row["status"], row.get("reason") or "", value, cand.get("handle") or {})

    # -- the meta-agent's view --------------------------------------------------------------------

    def _write_view(self) -> None:
        """ledger.tsv (dev and validation only), notes.md, and the trials' traces; never held-out."""
        self.view_dir.mkdir(parents=True, exist_ok=True)
        (self.view_dir / "ledger.tsv").write_text(self.ledger.view())
        notes = self.view_dir / "notes.md"
        if not notes.exists():
            notes.write_text("# notes\n\nThe meta-agent's memory across iterations.\n")
        for row in self.ledger.rows():
            trial_id = row.get("trial_id")
            if not trial_id:
                continue
            dest = self.view_dir / "trials" / trial_id
            if dest.is_dir():
                continue
            _copy_trial_view(self.run_dir / "trials" / trial_id, dest, row)


class LoopError(RuntimeError):
    pass


class PhaseClock:
    """Where a session's wall time goes, by phase (trials, record, propose, commit, smoke, heldout), for the stop
    record that bench/bench_loop.py reads: the loop's own overhead is what is not "trials". A phase inside another
    is counted on its own, not in its parent; one run while trials run (the pipelined proposals on GPUs) is kept
    apart as "... (during trials)", since it costs no wall time of its own. Used from the loop's main thread."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._stack: list[list] = []  # [phase, seconds spent in phases nested in it]

    @contextlib.contextmanager
    def __call__(self, name: str):
        overlapped = any(phase == "trials" for phase, _ in self._stack)
        key = f"{name} (during trials)" if overlapped else name
        start = time.perf_counter()
        self._stack.append([key, 0.0])
        try:
            yield
        finally:
            _, nested = self._stack.pop()
            spent = time.perf_counter() - start
            self.seconds[key] = self.seconds.get(key, 0.0) + spent - nested
            self.counts[key] = self.counts.get(key, 0) + 1
            if self._stack and not overlapped:
                self._stack[-1][1] += spent

    def report(self) -> dict:
        wall = time.perf_counter() - self.started
        counted = sum(v for k, v in self.seconds.items() if not k.endswith("(during trials)"))
        return {**{k: round(v, 2) for k, v in sorted(self.seconds.items())}, "other": round(wall - counted, 2),
                "wall": round(wall, 2), "counts": dict(sorted(self.counts.items()))}


@dataclass
class _LoadedResult:
    run_dir: Path
    meta: dict
    score: dict | None


@dataclass
class _FailedResult:
    error: str
    meta: dict = field(default_factory=dict)
    score: dict | None = None


def _interrupted(meta: dict) -> bool:
    """Stopped by Ctrl-C or SIGTERM at any stage (before the agent, during it, or while scoring): the trial says
    nothing about its file, which is tried again on --resume."""
    return meta.get("exit_reason") == "interrupted" or str(meta.get("status", "")).startswith("interrupted")


def _trial_problem(result) -> str | None:
    """Why a trial does not count as a measurement of its file, or None when it does."""
    if isinstance(result, _FailedResult):
        return f"the trial did not start: {result.error.strip().splitlines()[-1]}"
    meta, score = result.meta, result.score
    if meta.get("exit_reason") in ("crashed", "interrupted"):
        detail = (meta.get("exit_detail") or "").strip().splitlines()
        return f"the agent {meta['exit_reason']}" + (f": {detail[-1][:300]}" if detail else "")
    if score is None:
        return f"no score ({meta.get('status')}): {(meta.get('score_error') or '').strip().splitlines()[-1:] or ''}"
    if score.get("status") != "ok":
        return f"the scorer found the submission {score.get('status')}: {'; '.join(score.get('reasons', []))[:300]}"
    if not (Path(result.run_dir) / "per_query.json.gz").is_file():
        return "the scorer wrote no per_query.json.gz: nothing to gate on"
    return None


def _exception_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"


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


def _one_line(text) -> str:
    """A description as git keeps it: one printable line of at most 200 characters."""
    text = text if isinstance(text, str) else str(text)
    text = "".join(c if c.isprintable() else " " for c in text).encode("utf-8", "backslashreplace").decode("utf-8")
    return " ".join(text.split())[:200].rstrip() or "(no description)"


def _plain(handle) -> dict:
    """The meta-agent's bookkeeping as JSON can keep it (it goes into intents.jsonl)."""
    try:
        return json.loads(json.dumps(handle if isinstance(handle, dict) else {}, default=str))
    except (TypeError, ValueError, RecursionError):
        return {}


def gateway_spend(meta: dict) -> tuple[float, int]:
    """A trial's dollars and tokens by its gateway's own count (meta.json "gateway"); 0 when it ran none. Usage an
    agent reports of itself (meta "usage" from its trace, when the gateway saw no call) is shown, never summed: a
    harness with no model calls could report any cost, -1000 included, to stop --max-cost later."""
    usage = ((meta.get("gateway") or {}) if isinstance(meta.get("gateway"), dict) else {}).get("usage") or {}
    if not isinstance(usage, dict):
        return 0.0, 0
    cost = usage.get("cost_usd")
    cost = float(cost) if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0 else 0.0
    tokens = sum(v for v in (usage.get("input_tokens"), usage.get("output_tokens")) if isinstance(v, int) and v > 0)
    return cost, tokens


def spot_trial_cost(spot_dir: Path) -> float:
    """A spot check's dollars by its gateway: its meta.json once the trial ended, else its gateway's log so far."""
    meta = _read_json(spot_dir / "meta.json")
    if isinstance(meta.get("gateway"), dict):
        return gateway_spend(meta)[0]
    from autoembed.meta.gateway import usage_from_log

    logged = usage_from_log(spot_dir) or {}
    cost = logged.get("cost_usd")
    return float(cost) if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0 else 0.0


def _heldout_entry(score: dict) -> dict | None:
    held = _split_scores(score, "heldout")
    if held is None:
        return None
    return {"heldout": held, "base_heldout": _split_scores(score.get("base", {}), "heldout")}


def _split_scores(score: dict, split: str) -> dict | None:
    part = score.get(split)
    if not part:
        return None
    return {"mean": part["mean"]["ndcg@10"], "tasks": {t: row["ndcg@10"] for t, row in part.get("tasks", {}).items()}}


VIEW_LOG_BYTES = 2 * 2**20  # of each log a trial's view copies for the meta-agent


def _copy_trial_view(src: Path, dest: Path, row: dict) -> None:
    """What a meta-agent may read of a trial: its trace, its log, and a summary with dev and validation only."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("trace.md", "agent.log"):  # head and tail only: an agent decides how big its logs are
        if (src / name).is_file():
            bounded.copy_head_tail(src / name, dest / name, VIEW_LOG_BYTES)
    summary = {k: row.get(k) for k in ("trial_id", "kind", "commit", "status", "reason", "gate_split", "validation", "dev",
                                       "diff", "ci_low", "ci_high", "runs", "description")}
    (dest / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


class RunFolderBusy(ValueError):
    """Another loop holds this run folder (a user error: exit 2, one line)."""


def lock_run_folder(run_dir: Path):
    """The run folder's lock file, flock'ed exclusively and holding this process's pid, for the loop's life (closing
    it releases the lock; so does the process's end, however it ends). Two loops in one folder would number
    candidates twice and run one candidate twice; the second is refused here, before it writes anything."""
    path = Path(run_dir) / LOCK_NAME
    fh = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read(32).strip() or "unknown"
        fh.close()
        raise RunFolderBusy(f"another loop (pid {holder}) is running in {run_dir}: one loop per run folder; wait for "
                            f"it to end, or stop it (kill {holder}) and then --resume {run_dir}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def start_meta_gateway(config: LoopConfig, run_dir: Path, spent: float = 0.0):
    """The loop's own gateway for an LLM meta-agent (None for the search, a scripted one, or --meta-base-url),
    capped at what is left of --max-cost after `spent` (the trials'; the gateway counts its earlier sessions)."""
    from autoembed.llm.registry import parse_model

    if config.meta == "search" or config.meta_base_url or parse_model(config.meta)[0] == "scripted":
        return None
    from autoembed.meta.gateway import MetaGateway

    cap = None if config.max_cost is None else max(config.max_cost - spent, 0.0)
    return MetaGateway(config.meta, Path(run_dir) / "meta" / "gateway", cap).start()


def make_meta_agent(config: LoopConfig, run_dir: Path, gateway=None) -> MetaAgent:
    if config.meta == "search":
        from autoembed.meta.search import SearchMetaAgent

        return SearchMetaAgent(Path(run_dir) / "meta", seed=config.seed)
    from autoembed.meta.llm_agent import LLMMetaAgent

    if gateway is not None:
        return LLMMetaAgent(config.meta, Path(run_dir) / "meta", base_url=gateway.base_url, token=gateway.token)
    return LLMMetaAgent(config.meta, Path(run_dir) / "meta", base_url=config.meta_base_url,
                        token=os.environ.get(META_TOKEN_ENV) or None)


def _gpu_here(slot: str | None, meta: dict) -> str | None:
    """The GPU of this machine that a trial used, for its row and its deferred held-out scoring (which runs here):
    the slot itself without --places; with them the slot is a label ("place:gpu") and the trial's placement record
    says which GPU it had, one of this machine's only on a local place or a unix:// Docker engine."""
    placement = meta.get("placement")
    if not placement:
        return slot
    here = placement.get("kind") == "local" or str(placement.get("url", "")).startswith("unix://")
    return placement.get("gpu") if here else None


def _placement_columns(meta: dict) -> dict:
    """Where a placed trial ran, from its meta.json: the place that finished it, its attempts and the places that
    failed it before (with --places the row's gpu is only the slot the loop planned on; the pool picks the place)."""
    placement = meta.get("placement")
    if not placement:
        return {}
    return {"place": placement.get("place"), "place_attempts": placement.get("attempts"),
            "place_failed": [f.get("place") for f in placement.get("failed") or []]}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- entry points ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from autoembed.commands.options import add_task_and_mode

    p.add_argument("--hours", type=float, default=None,
                   help="the loop's wall-clock budget, counted once the scorer is prepared (the first run on a machine "
                        "prepares it, minutes on a CPU): it covers proposing, smoke checks, trials (seeding, training, "
                        "scoring), the gate and the held-out scoring of kept steps; no trial starts that is not "
                        "expected to end within it (default 1)")
    p.add_argument("--trial-hours", type=float, default=None, help="each trial's budget (default 0.05 = 3 min)")
    p.add_argument("--target", choices=sorted(TARGETS), default=None, help="the file to improve (default recipe)")
    p.add_argument("--meta", default=None, help="search (default: Optuna TPE over the knobs) or provider:model")
    p.add_argument("--meta-base-url", default=None,
                   help=f"send the LLM meta-agent's requests to this gateway of your own, token from ${META_TOKEN_ENV} "
                        "(default: the loop runs one, logging every request under <run>/meta/gateway/)")
    p.add_argument("--task-model", default=None, help=f"the harness's model (--target harness; default {DEFAULT_TASK_MODEL})")
    p.add_argument("--max-cost", type=float, default=None, help="stop after this many dollars (trials + meta-agent)")
    p.add_argument("--max-iterations", type=int, default=None, help="stop after this many candidates")
    p.add_argument("--gpus", default=None, help="GPU ids, one trial per GPU side by side, e.g. 0,1 (default: CPU)")
    p.add_argument("--places", default=None, metavar="TOML",
                   help="run trials on these places (local GPUs, Docker engines, Slurm), one per slot; see README")
    p.add_argument("--sandbox", default=None, choices=["auto", "docker", "bwrap", "none"])
    p.add_argument("--baseline-runs", type=int, default=None,
                   help=f"A/A runs of the baseline at the start (default 3 with --gpus, {CPU_BASELINE_RUNS} on a CPU)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the loop in this run folder")
    p.add_argument("--out", default=None, help="run folder (default traces/loops/<run-id>)")
    add_task_and_mode(p, "sets")


def config_from_args(args) -> tuple[Path, LoopConfig]:
    """The run folder and its config: a new one, or the saved one (with these options overriding) on --resume."""
    given = {"hours": args.hours, "trial_hours": args.trial_hours, "target": args.target, "meta": args.meta,
             "task_model": args.task_model, "max_cost": args.max_cost, "max_iterations": args.max_iterations,
             "sandbox": args.sandbox, "baseline_runs": args.baseline_runs, "seed": args.seed, "task": args.task,
             "fast": args.fast, "meta_base_url": args.meta_base_url, "places": args.places}
    if args.gpus is not None:
        given["gpus"] = [g.strip() for g in args.gpus.split(",") if g.strip()]
    given = {k: v for k, v in given.items() if v is not None}
    if args.task == "embed" and args.resume:
        given.pop("task")
    if args.resume:
        run_dir = Path(args.resume)
        saved = _read_json(run_dir / "config.json")
        if not saved:
            raise ValueError(f"--resume {run_dir}: no config.json there; give a folder under traces/loops/")
        for fixed in ("target", "meta"):
            if fixed in given and given[fixed] != saved[fixed]:
                raise ValueError(f"--resume: --{fixed} {given[fixed]} differs from the run's {saved[fixed]}; a run keeps its {fixed}")
        config = LoopConfig(**{**saved, **given})
    else:
        config = LoopConfig(**given)
        if "meta" not in given and any(os.environ.get(k) for k in PROVIDER_KEYS):
            print("[loop] a provider key is set, but the meta-agent is the search (no LLM spends money unless asked): "
                  "pass --meta provider:model for an LLM meta-agent", file=sys.stderr)
        if "baseline_runs" not in given and not config.gpus:
            config.baseline_runs = CPU_BASELINE_RUNS
        if config.target == "harness" and not config.task_model:
            config.task_model = DEFAULT_TASK_MODEL
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        meta = "".join(c if c.isalnum() else "-" for c in config.meta.split(":")[0])
        run_dir = Path(args.out) if args.out else traces_dir() / "loops" / f"{stamp}-{config.target}-{meta}-{secrets.token_hex(3)}"
    _validate(config)
    return run_dir, config


def _validate(config: LoopConfig) -> None:
    if config.hours <= 0 or config.trial_hours <= 0:
        raise ValueError("--hours and --trial-hours must be positive")
    if config.trial_hours > config.hours:
        raise ValueError(f"--trial-hours {config.trial_hours:g} is more than the loop's --hours {config.hours:g}: no trial fits")
    if config.baseline_runs < 1:
        raise ValueError("--baseline-runs must be at least 1")
    if config.meta != "search":
        from autoembed.llm.registry import parse_model

        parse_model(config.meta)  # a clear error for a malformed provider:model now, not mid-run
    if config.places:
        from autoembed.placement.config import load_places

        load_places(Path(config.places))  # a clear error for a bad places file now, not when the first trial starts
        if config.gpus:
            raise ValueError("--places and --gpus both say where trials run: list this machine's GPUs as a local place")
    if len(set(config.gpus)) != len(config.gpus):
        raise ValueError(f"--gpus lists a GPU twice: {','.join(config.gpus)}")


def main_from_args(args) -> int:
    run_dir, config = config_from_args(args)
    return run_loop(run_dir, config)


def run_loop(run_dir: Path, config: LoopConfig, *, say=None, trial_runner=None, smoke=None, report_out=print,
             write_report: bool = True, pool=None, slots=None, stop=None) -> int:
    """Run (or resume) the loop in run_dir, then write its report (unless write_report is False): the one path of
    the CLI, the notebook's loop() and the cells of `autoembed compare`. say, trial_runner, smoke, pool, slots and
    stop go to Loop."""
    print(f"[loop] run folder: {run_dir}", file=sys.stderr, flush=True)
    try:
        code = Loop(run_dir, config, say=say, trial_runner=trial_runner, smoke=smoke, pool=pool, slots=slots,
                    stop=stop).run()
    except LoopError as exc:
        print(f"[loop] stopped: {exc}", file=sys.stderr, flush=True)
        code = 1
    if write_report:
        from autoembed.report import report

        report(run_dir, out=report_out)
    return code


def main(argv: list[str] | None = None) -> int:
    from autoembed.cli import main as cli_main

    return cli_main(["loop", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
