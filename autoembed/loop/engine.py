"""The meta-loop: a meta-agent improves one editable file; code, not a prompt, keeps or reverts each edit.

    python -m autoembed.loop --hours 24                       # search meta-agent on the recipe (no key needed)
    python -m autoembed.loop --hours 24 --target harness --meta anthropic:claude-opus-4-5 \\
        --task-model anthropic:claude-sonnet-4-6 --trial-hours 0.5 --gpus 0
    python -m autoembed.loop --resume traces/loops/<run-id>

Each iteration: propose -> commit (a ref per candidate) -> smoke check (invalid: no trial) -> duplicate check
-> trial(s) through autoembed.trial.run.run -> gate -> one ledger row per trial; the branch head is the best commit.
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

import fcntl
import inspect
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autoembed import editable, textsafe
from autoembed.clock import PhaseClock
from autoembed.loop import gate
from autoembed.loop.config import META_TOKEN_ENV, TARGETS, LoopConfig
from autoembed.loop.jobs import SCORED, Job, LoadedResult, LoopError
from autoembed.loop.ledger import Ledger
from autoembed.loop.meta.base import MetaAgent
from autoembed.loop.meta.repo import TargetRepo
from autoembed.loop.planning import Planning
from autoembed.loop.recording import Recording
from autoembed.loop.running import Running
from autoembed.records import read_json
from autoembed.sandbox.identity import forbid_shared_writes

_PREPARE_LOCK = threading.Lock()
LOCK_NAME = "loop.lock"  # in the run folder, flock'ed for the loop's life: one loop per run folder


@dataclass
class LoopHooks:
    """What a loop calls out to, each None for its own; tests, simulations and a grid of loops swap them.

    trial_runner(agent_spec, out, gpu, say, hours=None, tiers=...) -> a result with run_dir, meta, score
    (default: autoembed.trial.run.run, held-out deferred);
    smoke(target, source, workdir) -> SmokeResult (default: autoembed.loop.smoke.smoke_check);
    heldout_scorer(trial_dir, gpu, say) -> the trial's score.json with held-out (default:
    autoembed.trial.run.score_deferred);
    pool: a placement Pool shared with other loops (default: one of config.places' own); slots: the slot labels
    this loop plans its parallel candidates over (default: every slot of the pool, or config.gpus), a list read
    again at each batch, to which a grid adds the slots of cells that ended; stop: an Event that, once set, ends
    the loop between trials as an interruption (a grid running loops side by side)."""
    trial_runner: Callable | None = None
    smoke: Callable | None = None
    heldout_scorer: Callable | None = None
    pool: object | None = None
    slots: list | None = None
    stop: threading.Event | None = None


class Loop(Planning, Running, Recording):
    """One loop in one run folder: planning (planning.py), running (running.py) and recording (recording.py)
    composed; this class sets them up, runs the iterations and replays the records after a kill."""

    def __init__(self, run_dir: Path, config: LoopConfig, meta_agent: MetaAgent | None = None, say=None,
                 hooks: LoopHooks | None = None):
        self.run_dir = Path(run_dir)
        self.config = config
        forbid_shared_writes()  # the ledger, the repository and every trial folder: not writable by other users
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.meta_gateway = None
        self._lock_file = lock_run_folder(self.run_dir)  # before anything is written: a second loop here exits 2
        try:
            self._setup(config, meta_agent, say, hooks or LoopHooks())
        except BaseException:
            self.close()
            raise

    def _setup(self, config: LoopConfig, meta_agent: MetaAgent | None, say, hooks: LoopHooks) -> None:
        self._write_config()
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
        self.clock = PhaseClock(overlap="trials")
        self._lock = threading.Lock()
        self.deadline = time.time() + config.hours * 3600
        self._use_hooks(config, hooks)
        self._held: dict[str, float] = {}  # trial or spot id -> the dollar cap it holds of --max-cost while it runs
        self._held_lock = threading.Lock()

    def _use_hooks(self, config: LoopConfig, hooks: LoopHooks) -> None:
        self.trial_runner = hooks.trial_runner or self._run_trial
        pool = hooks.pool
        if pool is None and config.places:
            from autoembed.placement.config import load_pool  # only a loop on places needs docker/submitit

            pool = load_pool(config.places, self.say)
        self.pool = pool
        self.slots = hooks.slots or None
        self.stop = hooks.stop
        self.smoke = hooks.smoke or self._smoke_check
        self.heldout_scorer = hooks.heldout_scorer or self._score_heldout_of_trial
        # a runner without a tiers argument (an older simulation) scores every tier, as run() does by default
        self._runner_tiers = "tiers" in inspect.signature(self.trial_runner).parameters
        self._runner_caps = "max_usd" in inspect.signature(self.trial_runner).parameters

    def _open_repo(self) -> TargetRepo:
        path = self.view_dir / "repo"
        repo = TargetRepo.open_if_complete(path, self.target.filename)
        if repo is not None:
            return repo
        source = self.target.baseline.read_text()
        editable.check_adapter(source, self.target.adapter_sha256(), str(self.target.baseline))
        if path.exists():  # a kill during creation: start the repository again
            shutil.rmtree(path)
        return TargetRepo.create(path, self.target.filename, source, f"baseline: {self.target.baseline.name}")

    def _prepare(self) -> None:
        """The scorer's one-time preparation on this machine (minutes the first time), before the budget starts,
        as a trial does before its agent's clock."""
        from autoembed.trial.run import _prepare_scorer_once
        from autoembed.task.spec import load_spec

        with _PREPARE_LOCK:  # loops side by side (a grid on places): one prepares, the others find it prepared
            _prepare_scorer_once(load_spec(self.config.task), self.config.fast, self.config.gpus[:1] or None, self.say)

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
        if any(r["op"] == "session" for r in self.intents()) and not self._scored_any():
            from autoembed.loop.report import unscored_line

            self.say(f"resume: {unscored_line(self.run_dir, self.ledger.rows())}")
        self._intend({"op": "session", "event": "start", "gpus": self.config.gpus, "hours": self.config.hours})
        started = len(self.intents())
        self.clock = PhaseClock(overlap="trials")
        where: dict = {"phase": None, "trials": []}  # what an interruption cut off, for the stop record and the report
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
                    cut = {r["trial_id"] for r in self.ledger.rows() if r.get("interrupted")}
                    where = {"phase": "trials", "trials": [{"trial_id": j.trial_id, "kind": j.kind, "candidate": j.candidate}
                                                           for j in jobs if j.trial_id in cut]}
                    break
        except KeyboardInterrupt:  # between trials (proposing, a smoke check): --resume continues from the records
            stop = "interrupted"
            recorded = {r["trial_id"] for r in self.ledger.rows()}
            where = {"phase": self.clock.cut_in, "trials": [  # begun in this session, no row yet: in flight
                {k: i.get(k) for k in ("trial_id", "kind", "candidate")} for i in self.intents()[started:]
                if i["op"] == "trial" and i["trial_id"] not in recorded]}
        except LoopError as exc:
            self.say(f"stopping: {exc}")
            self._intend({"op": "session", "event": "stop", "reason": str(exc), "phases": self.clock.report()})
            raise
        self.say(f"stopping: {stop}")
        self._intend({"op": "session", "event": "stop", "reason": stop, **(where if stop == "interrupted" else {}),
                      "phases": self.clock.report()})
        if stop == "interrupted":
            return 130
        self._write_view()
        if not self._scored_any():
            self.say(f"ended with no trial scored: nothing was measured, so there is no best commit; ledger {self.ledger.path}")
            return 1
        self.say(f"done: best commit {self.best_commit()[:10]}; ledger {self.ledger.path}")
        return 0

    def _scored_any(self) -> bool:
        return any(r["status"] in SCORED for r in self.ledger.rows())

    def replay(self) -> None:
        """Bring the records into agreement after a kill: trials begun but not recorded, the branch head, the
        meta-agent's view of decided candidates."""
        recorded = {r["row_id"] for r in self.ledger.rows()}
        for intent in self.intents():
            if intent["op"] != "trial" or intent["trial_id"] in recorded:
                continue
            job = Job(intent["kind"], intent["commit"], intent.get("candidate"), intent["trial_id"], intent.get("gpu"))
            trial_dir = self.run_dir / "trials" / job.trial_id
            meta = read_json(trial_dir / "meta.json", {})
            if meta.get("status") == "scored" and (trial_dir / "score.json").is_file():
                self.say(f"resume: recording trial {job.trial_id}, which finished before the loop stopped")
                self._record_contained(job, LoadedResult(trial_dir, meta, read_json(trial_dir / "score.json", {})), None)
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
    from autoembed.loop.meta.gateway import MetaGateway

    cap = None if config.max_cost is None else max(config.max_cost - spent, 0.0)
    return MetaGateway(config.meta, Path(run_dir) / "meta" / "gateway", cap).start()


def make_meta_agent(config: LoopConfig, run_dir: Path, gateway=None) -> MetaAgent:
    if config.meta == "search":
        from autoembed.loop.meta.search import SearchMetaAgent

        return SearchMetaAgent(Path(run_dir) / "meta", seed=config.seed)
    from autoembed.loop.meta.llm_agent import LLMMetaAgent

    if gateway is not None:
        return LLMMetaAgent(config.meta, Path(run_dir) / "meta", base_url=gateway.base_url, token=gateway.token)
    return LLMMetaAgent(config.meta, Path(run_dir) / "meta", base_url=config.meta_base_url,
                        token=os.environ.get(META_TOKEN_ENV) or None)


# -- entry points ---------------------------------------------------------------------------------


def run_loop(run_dir: Path, config: LoopConfig, *, say=None, hooks: LoopHooks | None = None, report_out=print,
             write_report: bool = True) -> int:
    """Run (or resume) the loop in run_dir, then write its report (unless write_report is False): the one path of
    the CLI, the notebook's loop() and the cells of `autoembed compare`. say and hooks go to Loop."""
    print(f"[loop] run folder: {run_dir}", file=sys.stderr, flush=True)
    try:
        code = Loop(run_dir, config, say=say, hooks=hooks).run()
    except LoopError as exc:
        print(f"[loop] stopped: {exc}", file=sys.stderr, flush=True)
        code = 1
    if write_report:
        from autoembed.loop.report import report

        report(run_dir, out=report_out)
    return code
