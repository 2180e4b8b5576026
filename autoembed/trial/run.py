"""One trial end to end: seed -> sandbox(agent) -> freeze final_model -> sealed score -> traces/<run-id>/.

    from autoembed.trial.run import run
    result = run("recipe", hours=0.05)
    result.score["dev"]["mean"][result.meta["main_metric"]]   # the metric task.toml names ([eval] main_metric)

Everything a trial produces lives in its run folder; meta.json is written at the start and rewritten at
every state change, so a trial that is interrupted or killed still leaves a record that says so.
"""

from __future__ import annotations

import inspect
import json
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from autoembed import ladder, nofollow, textsafe
from autoembed.version import __version__
from autoembed.trial import summary, trajectory
from autoembed.agents.base import AgentOutcome, TrialContext
from autoembed.agents.registry import agent_kind
from autoembed.gateway.server import Gateway, Limits, upstreams_from_env
from autoembed.paths import REPO_ROOT, traces_dir
from autoembed.records import write_text_atomic
from autoembed.trial.preflight import preflight
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.factory import make_sandbox
from autoembed.sandbox.limits import LimitError, WorkdirVolume, Limits as ResourceLimits
from autoembed.sandbox.identity import forbid_shared_writes, require_open_to
from autoembed.sandbox.workdir_guard import describe_cleaning, make_inert
from autoembed.trace import TraceWriter, Usage, read_trace, render_markdown, total_usage

GATEWAY_CHECK_S = 2.0  # how often a trial checks that its LLM gateway still answers
PROGRESS_EVERY_S = 30.0
EVALS_TAIL_BYTES = 1 << 20


@dataclass
class TrialResult:
    run_id: str
    run_dir: Path
    meta: dict
    score: dict | None = None

    @property
    def exit_reason(self) -> str:
        return self.meta.get("exit_reason", "unknown")

    @property
    def exit_code(self) -> int:
        """0: ran and scored clean; 1: ran but crashed, timed out, was interrupted, or scored broken or flagged."""
        return summary.exit_code(self.meta, self.score)

    def summary(self) -> str:
        """A grep-able block (one key: value per line) for the end of a run."""
        return summary.render(self.run_id, self.run_dir, self.meta, self.score)


class TrialFailedToStart(RuntimeError):
    """The trial's folder exists but no agent ran; meta.json says failed_to_start with the reason."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


def new_run_id(agent: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() else "-" for c in agent_kind(agent))
    return f"{stamp}-{safe}-{secrets.token_hex(3)}"


@dataclass
class TrialOptions:
    """run()'s keyword arguments (see run), carried as one object through a trial's stages."""
    task: str = "embed"
    hours: float | None = None
    sandbox: str = "auto"
    model: str | None = None
    gpus: list[str] | None = None
    out: Path | None = None
    fast: bool | None = None
    progress: Callable[[str], None] | str | None = None
    reprompt_margin_s: float = 300.0
    max_usd: float | None = None
    max_tokens: int | None = None
    check_key: bool = True
    tiers: tuple[str, ...] | None = None
    placement: dict | None = None


def run(agent: str, **options) -> TrialResult:
    """Run one trial and return its result; never raises for agent failures (they are recorded).
    Keywords (TrialOptions): task, hours, sandbox, model, gpus, out, fast, progress, reprompt_margin_s, max_usd,
    max_tokens, check_key, tiers, placement.
    Bad input raises PreflightError before a run folder exists (check_key: ask the provider whether the key is
    accepted); a start that fails after that raises TrialFailedToStart, its folder saying failed_to_start.
    SIGTERM is treated like Ctrl-C for the whole trial, so a killed trial records why it ended.
    max_usd / max_tokens override the task's [budget] caps on the trial's LLM gateway.
    progress: a callable that gets each progress line (default: print to stderr), or "bar" for a progress bar
    over the agent's budget that works in Jupyter and in a terminal (tqdm.auto).
    tiers: the tiers scored now (default all three); ("dev", "validation") defers held-out, which score_deferred
    adds later (the loop scores held-out only for the commits it keeps).
    placement: where the trial runs (autoembed.placement records place, kind, gpu and attempts), kept in
    meta.json from the start."""
    opts = TrialOptions(**options)  # an unknown keyword is a TypeError, as with a plain signature
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    volumes: list[WorkdirVolume] = []
    bars: list = []
    try:
        return _run(agent, opts, volumes, bars)
    finally:
        for bar in bars:
            bar.close()
        for volume in volumes:  # the fixed-size workdir's content goes back to a plain folder, whatever happened
            try:
                volume.release()
            except LimitError as exc:  # the trial's record stands; the workdir stays in its image
                print(f"[autoembed] the workdir was left in {volume.image}: {exc}", file=sys.stderr, flush=True)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


run.__signature__ = inspect.Signature(  # help(run) and a notebook's completion show the keywords
    [inspect.Parameter("agent", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
       for f in fields(TrialOptions)], return_annotation="TrialResult")


def _plan(agent: str, opts: TrialOptions, bars: list):
    """Preflight (bad input raises before a folder exists) and the progress sink: (plan, say)."""
    progress = opts.progress
    say = progress if callable(progress) else (lambda msg: print(f"[autoembed] {msg}", file=sys.stderr, flush=True))
    for flag, cap in (("--max-usd", opts.max_usd), ("--max-tokens", opts.max_tokens)):  # input, then the environment
        if cap is not None and not cap > 0:
            raise ValueError(f"{flag} must be positive, got {cap} (leave it out for the task's [budget])")
    plan = preflight(agent, task=opts.task, hours=opts.hours, sandbox=opts.sandbox, model=opts.model,
                     live_key_check=opts.check_key, gpus=opts.gpus)
    for notice in plan.notices:
        say(notice)
    if progress == "bar":
        from autoembed.progress import Bar

        say = Bar(plan.hours * 3600, f"trial {agent.split(':')[0]}")
        bars.append(say)  # closed by run() when the trial ends, however it ends
    return plan, textsafe.escaping(say)  # progress lines carry what the agent wrote (commands, eval values): escaped


def _open_run_dir(agent: str, opts: TrialOptions, plan) -> tuple[str, Path, dict]:
    """The trial's folder and its first meta.json: (run_id, run_dir, meta)."""
    run_id = new_run_id(agent)
    run_dir = Path(opts.out) if opts.out else traces_dir() / run_id
    forbid_shared_writes()  # a umask of 0 (some containers) would make traces/ and every file in it world-writable
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=False)  # other users may neither write nor read a trial's folder
    meta = {"run_id": run_id, "agent": agent, "model": opts.model, "task": plan.spec.name, "hours": plan.hours,
            "main_metric": plan.spec.main_metric, "status": "starting", "started": _now(),
            "versions": _versions(plan.agent)}
    if opts.placement is not None:
        meta["placement"] = opts.placement
    _write_json(run_dir / "meta.json", meta)
    return run_id, run_dir, meta


def _run(agent: str, opts: TrialOptions, volumes: list, bars: list) -> TrialResult:
    plan, say = _plan(agent, opts, bars)
    spec, agent_obj = plan.spec, plan.agent
    run_id, run_dir, meta = _open_run_dir(agent, opts, plan)
    workdir = run_dir / "workdir"
    try:
        box, manifest = _start(plan, opts, workdir, meta, run_dir, say, volumes)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while building the image, preparing the scorer or seeding
        say("interrupted before the agent started: no agent ran")
        meta.update(status="interrupted_while_preparing", exit_reason="interrupted", ended=_now())
        _write_json(run_dir / "meta.json", meta)
        return TrialResult(run_id, run_dir, meta, None)
    deadline = float(manifest["deadline"])
    prompt = nofollow.read_text(workdir, "instructions.md")
    gateway = _gateway_for(agent_obj, run_dir, spec, deadline, opts.max_usd, opts.max_tokens)
    box.config.gateway_socket = gateway.socket_path if gateway else None
    meta["sandbox"] = box.describe()
    trace = TraceWriter(run_dir / "trace.jsonl", source=agent_obj.name)
    ctx = TrialContext(workdir=workdir, sandbox=box, deadline=deadline, prompt=prompt, model=opts.model, trace=trace,
                       raw_log=run_dir / "agent.log", run_dir=run_dir, progress=say,
                       reprompt_margin_s=opts.reprompt_margin_s, spec=spec, base_model=meta["base_model"],
                       manifest=manifest)

    outcome = _run_agent(agent_obj, ctx, box, meta, run_dir, say, gateway)
    meta.update(exit_reason=outcome.exit_reason, exit_detail=outcome.detail, turns=outcome.turns,
                agent_ended=_now(), agent_seconds=round(time.time() - meta["agent_started_epoch"], 3))
    _record_model_use(meta, gateway, run_dir, agent_obj, prompt)
    _record_limits(meta, box, volumes)

    frozen = _freeze(workdir, run_dir, meta)
    score = _score(workdir, frozen, spec, opts, meta, run_dir, say, manifest)
    result = TrialResult(run_id, run_dir, meta, score)
    print(result.summary(), flush=True)
    return result


def _score(workdir: Path, frozen: Path, spec, opts: TrialOptions, meta: dict, run_dir: Path, say, manifest):
    """Score the frozen final_model with the sealed scorer and write the final meta.json: score.json or None."""
    meta["status"] = "scoring"
    _write_json(run_dir / "meta.json", meta)
    say("scoring final_model with the sealed scorer")
    t1 = time.time()
    try:
        from autoembed.sealed.scorer import score_workdir  # loaded already by _preload_scorer, unless it failed

        score = score_workdir(workdir, task=spec, fast=opts.fast, base_path=Path(meta["base_model"]), manifest=manifest,
                              out=run_dir / "score.json", progress=say, device=_device_for(opts.gpus),
                              final_model=frozen, final_model_hashes=(meta["final_model"] or {}).get("files", {}),
                              **({"tiers": tuple(opts.tiers)} if opts.tiers else {}))
        meta["status"] = "scored"
    except KeyboardInterrupt:
        score = None
        meta["status"] = "interrupted_while_scoring"
        say("interrupted while scoring: the trial is recorded without a score")
    except Exception:  # a scorer failure is recorded, never silently turned into a score
        score = None
        meta["status"] = "score_failed"
        meta["score_error"] = traceback.format_exc()
    meta.update(score_seconds=round(time.time() - t1, 3), ended=_now())
    if score is not None:
        meta["scores"] = summary.headline(score, summary.load_per_query(run_dir), spec.main_metric)
        meta["normalized"] = ladder.normalized(score, spec.name)  # base model 0, reference recipe 1, or why not
    meta["result"] = "clean" if summary.exit_code(meta, score) == 0 else "not clean"
    meta["problems"] = summary.problems(meta, score)
    _write_json(run_dir / "meta.json", meta)
    return score


def score_deferred(run_dir: Path, task: str = "embed", gpus: list[str] | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Score the tiers a trial deferred (run(..., tiers=...)) on its frozen final_model, and bring score.json,
    per_query.json.gz and meta.json's headline scores up to date. Returns score.json; idempotent."""
    from autoembed.sealed.scorer import score_deferred_tiers
    from autoembed.task.spec import load_spec

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    spec = load_spec(task)
    score = score_deferred_tiers(run_dir / "score.json", run_dir / "final_model",
                                 (meta.get("final_model") or {}).get("files", {}), task=spec,
                                 device=_device_for(gpus), progress=progress)
    headline = summary.headline(score, summary.load_per_query(run_dir), spec.main_metric)
    if meta.get("scores") != headline:
        meta["scores"] = headline
        _write_json(run_dir / "meta.json", meta)
    return score


def _run_agent(agent_obj, ctx: TrialContext, box, meta: dict, run_dir: Path, say, gateway) -> AgentOutcome:
    """Start the gateway and the sandbox, run the agent, always stop both; Ctrl-C/SIGTERM become 'interrupted'."""
    stop_progress = threading.Event()
    meta["agent_started_epoch"] = time.time()
    try:
        if gateway is not None:
            gateway.start()
        box.start()
    except BaseException as exc:
        box.stop()
        if gateway is not None:
            gateway.stop()
        _failed_to_start(meta, run_dir, "starting the sandbox", exc)
    try:
        if gateway is not None:  # the agent's only credentials: base URLs at the gateway and the trial's token
            ctx.env = {**gateway.agent_env(box.gateway_url), **ctx.env}
            meta["sandbox"]["gateway_url"] = box.gateway_url
        meta.update(status="running", agent_started=_now(), sandbox_start_s=round(time.time() - meta["agent_started_epoch"], 3))
        _write_json(run_dir / "meta.json", meta)
        threading.Thread(target=_report_progress, args=(ctx, stop_progress, say), daemon=True).start()
        threading.Thread(target=_preload_scorer, daemon=True).start()
        if gateway is not None:
            threading.Thread(target=_watch_gateway, args=(gateway, box, stop_progress, say), daemon=True).start()
        outcome = agent_obj.run(ctx)
        if outcome.exit_reason != "crashed" and time.time() >= ctx.deadline:
            outcome.exit_reason = "deadline"
        lost = gateway.lost() if gateway is not None else None
        if lost:  # the agent's one way to its model went away under it: however it ended, the trial is broken
            meta["gateway_lost"] = lost
            outcome = AgentOutcome("crashed", f"{outcome.detail or ''}\nthe agent ended {outcome.exit_reason} after "
                                              f"the trial's LLM gateway stopped answering ({lost})".strip(), outcome.turns)
        return outcome
    except KeyboardInterrupt:
        say("interrupted: stopping the agent and recording the trial as interrupted")
        return AgentOutcome("interrupted", "KeyboardInterrupt or SIGTERM")
    except Exception:
        return AgentOutcome("crashed", traceback.format_exc())
    finally:
        stop_progress.set()
        box.stop()
        if gateway is not None:
            gateway.stop()


def _start(plan, opts: TrialOptions, workdir: Path, meta: dict, run_dir: Path, say, volumes: list):
    """Build or check the sandbox, prepare the scorer, make the fixed-size workdir, seed it: (sandbox, seed
    manifest). The sandbox is made before the seed fixes the deadline: building or checking a docker image (minutes
    after a package change) must not eat the agent's budget. A failure records failed_to_start and raises
    TrialFailedToStart."""
    from autoembed.task.base_model import resolve_base_model
    from autoembed.task.seed import seed_workdir

    spec = plan.spec  # parsed once: every part of the trial gets this object
    # fitted to this machine's share for the trials its place runs side by side; meta.json says how
    side_by_side = int((meta.get("placement") or {}).get("side_by_side") or 1)
    limits = ResourceLimits.from_spec(spec, concurrent=side_by_side, disk_folder=run_dir)
    config = SandboxConfig(workdir=workdir, deadline=time.time() + plan.hours * 3600, gpus=opts.gpus,
                           readonly_extra=plan.agent.readonly_mounts(), memory_gb=limits.memory_gb,
                           cpus=limits.cpus, tmpfs_gb=limits.tmpfs_gb,
                           **({"pids_limit": limits.pids} if limits.pids else {}))
    t0 = time.time()
    try:
        box = make_sandbox(plan.sandbox, config, task=opts.task, progress=say)
    except Exception as exc:
        _failed_to_start(meta, run_dir, "making the sandbox", exc)
    meta["sandbox_prepare_s"] = round(time.time() - t0, 3)

    t0 = time.time()
    try:
        meta["scorer_prepared_now"] = _prepare_scorer_once(spec, opts.fast, opts.gpus, say)
    except Exception as exc:  # the harness cannot score here: say so before an agent spends its budget
        _failed_to_start(meta, run_dir, "preparing the scorer", exc)
    meta["scorer_prepare_s"] = round(time.time() - t0, 3)

    t0 = time.time()
    try:
        meta["limits"] = {**vars(limits), "workdir": _fixed_size_workdir(workdir, limits, volumes)}
        base_path = resolve_base_model(spec.base_model, spec.base_model_sha256)  # its weights hashed once per trial
        if Path(base_path).is_dir():  # task.py names this path: a task image need not hold the model there
            require_open_to(box.ids()[0], Path(base_path), "the base model")  # the agent is another uid
            box.config.readonly_extra.append(Path(base_path))
        manifest = seed_workdir(workdir, plan.hours, spec, base_model=str(base_path))
    except Exception as exc:
        _failed_to_start(meta, run_dir, "seeding the workdir", exc)
    meta["base_model"] = str(base_path)
    box.config.deadline = float(manifest["deadline"])
    (run_dir / "prompt.txt").write_text(nofollow.read_text(workdir, "instructions.md"))
    _write_json(run_dir / "seed_manifest.json", manifest)
    meta.update(deadline=box.config.deadline, deadline_iso=_iso(box.config.deadline), seed_s=round(time.time() - t0, 3))
    meta["sandbox"] = box.describe()
    return box, manifest


def _failed_to_start(meta: dict, run_dir: Path, stage: str, exc: BaseException):
    """Record that no agent ran, and why, then raise TrialFailedToStart (chained to the cause)."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    meta.update(status="failed_to_start", failed_stage=stage, reason=summary.last_line(reason),
                error="".join(traceback.format_exception(exc)), ended=_now())
    _write_json(run_dir / "meta.json", meta)
    raise TrialFailedToStart(f"the trial failed to start ({stage}): {summary.last_line(str(exc) or reason)}; "
                             f"its record: {run_dir / 'meta.json'}", run_dir) from exc


def _prepare_scorer_once(spec, fast: bool | None, gpus: list[str] | None, say) -> bool:
    """Fill the scorer's caches on this machine (n-gram indexes, base-model scores, token features) the first
    time only, before the seed fixes the deadline, so the agent's budget and the wait for score.json both
    stay free of that minute. True when it did the work now."""
    from autoembed.sealed import heldout, scorer_cache

    device_type = "cuda" if gpus else _default_device_type()
    resolved_fast = (device_type != "cuda") if fast is None else fast
    if scorer_cache.marker_path(spec, heldout.HELDOUT_DIR, resolved_fast, device_type).is_file():
        return False
    say("preparing the scorer on this machine: once per machine and data version, before the agent's clock starts")
    from autoembed.sealed.scorer import prepare_scorer

    prepare_scorer(spec, fast=fast, device=_device_for(gpus), progress=say)
    return True


def _default_device_type() -> str:
    import torch  # only without --gpus: the scorer then takes a GPU where torch sees one

    return "cuda" if torch.cuda.is_available() else "cpu"


def _preload_scorer() -> None:
    """Import the scorer (torch, sentence-transformers: seconds on a cold disk) while the agent works, so
    neither the agent's first command nor score.json waits for it. Only imports: no GPU, no data."""
    try:
        import autoembed.sealed.scorer  # noqa: F401
    except Exception:  # noqa: BLE001, S110 - the import is retried, and its error recorded, at scoring time
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _watch_gateway(gateway: Gateway, box, stop: threading.Event, say) -> None:
    """A gateway lost mid-trial never comes back: stop the sandbox at once (as the deadline does) rather than let
    the agent spend the rest of its budget retrying calls that cannot go out."""
    while not stop.wait(GATEWAY_CHECK_S):
        lost = gateway.lost()
        if lost:
            say(f"the trial's LLM gateway stopped answering ({lost}): stopping the agent")
            box.stop()
            return


def _report_progress(ctx: TrialContext, stop: threading.Event, say) -> None:
    evals_seen = 0
    while not stop.wait(PROGRESS_EVERY_S):
        left = ctx.deadline - time.time()
        last = ctx.trace.last_event
        what = f"last: {last.kind} {last.tool or ''}".strip() if last else "no events yet"
        evals = _agent_evals(ctx.workdir)
        line = f"{max(0, left) / 60:.1f} min left; {what}"
        if len(evals) > evals_seen:
            latest, metric = evals[-1], ctx.spec.main_metric
            line += f"; dev eval #{len(evals)}: {metric} {latest.get('mean', {}).get(metric, '?')}"
            evals_seen = len(evals)
        say(line)


def _agent_evals(workdir: Path) -> list[dict]:
    """Dev evaluations the agent ran through task.py (it appends them to .evals.jsonl); for progress only. Read
    without following a link (the agent owns the file) and only its tail."""
    try:
        text = nofollow.read_tail(workdir, ".evals.jsonl", EVALS_TAIL_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("mean", {}), dict):  # the agent wrote it: any shape at all
            rows.append(row)
    return rows


def _fixed_size_workdir(workdir: Path, limits: ResourceLimits, volumes: list) -> dict:
    """Mount a filesystem of limits.disk_gb at the workdir's path (before seeding); says what was done."""
    if not limits.disk_gb:
        workdir.mkdir()
        return {"enforced": False, "not_enforced_because": "task.toml sets no [limits] disk_gb"}
    volume = WorkdirVolume(workdir, limits.disk_gb)
    try:
        volume.create()
    except LimitError as exc:
        workdir.mkdir(exist_ok=True)
        return {"enforced": False, "not_enforced_because": str(exc)}
    volumes.append(volume)
    return {"enforced": True, "size_gb": limits.disk_gb, "image": str(volume.image)}


def _record_limits(meta: dict, box, volumes: list) -> None:
    """After the sandbox is stopped: what the sandbox enforced, and which limits the agent hit."""
    sandbox_limits = box.describe().get("limits") or {}
    meta["limits"]["sandbox"] = sandbox_limits
    events = sandbox_limits.get("events") or {} if isinstance(sandbox_limits, dict) else {}
    hit = []
    if events.get("oom_kills"):
        hit.append(f"memory: {events['oom_kills']} process(es) killed for exceeding {meta['limits']['memory_gb']} GiB")
    if events.get("pids_refused"):
        hit.append(f"pids: {events['pids_refused']} fork(s) refused at {meta['limits']['pids']} processes")
    for volume in volumes:
        usage = volume.usage()
        meta["limits"]["workdir"].update(usage)
        if usage["full"]:
            hit.append(f"disk: the workdir is full ({usage['used_gb']} of {usage['size_gb']} GiB)")
    meta["limits"]["hit"] = hit
    try:  # every process of the agent is gone: nothing it left may act on the host (set-uid files, devices, FIFOs)
        meta["workdir_cleaned"] = make_inert(Path(box.config.workdir))
    except OSError as exc:
        meta["workdir_cleaned"] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        if meta["workdir_cleaned"]["stripped"] or meta["workdir_cleaned"]["dropped"]:
            print(f"[autoembed] workdir: {textsafe.escape(describe_cleaning(meta['workdir_cleaned']))}",  # agent's names
                  file=sys.stderr, flush=True)


def _freeze(workdir: Path, run_dir: Path, meta: dict) -> Path:
    """Every process of the agent is dead (the sandbox is stopped): copy final_model out of the workdir into the
    run folder without following a link anywhere, and record the copy's hashes. The scorer scores the copy and
    checks it against them, so nothing the agent left running or linked can change what is scored."""
    frozen = run_dir / "final_model"
    try:
        hashes, left_out = nofollow.copy_tree(workdir, "final_model", frozen, max_bytes=_submission_limit(meta))
    except FileNotFoundError:
        meta["final_model"] = None
    except nofollow.TooLarge as exc:  # measured before a byte was copied: a sparse terabyte costs the host nothing
        meta["final_model"] = {"error": f"final_model was not copied: {exc}", "too_large": exc.facts}
    except OSError as exc:  # final_model is a link, a file, or unreadable: recorded; the scorer finds no model
        meta["final_model"] = {"error": f"final_model was not copied: {exc}"}
    else:
        meta["final_model"] = {"path": str(frozen), "files": hashes, "left_out": left_out}
    return frozen


def _submission_limit(meta: dict) -> int:
    """The scorer's size limit for final_model (from the base model's size), which the freeze applies before it
    copies; the scorer's absolute cap where the base model cannot be measured."""
    from autoembed.sealed import submission

    base = meta.get("base_model")
    return submission.size_limit(submission.folder_bytes(Path(base))) if base and Path(base).is_dir() else submission.MAX_BYTES


def _gateway_for(agent_obj, run_dir: Path, spec, deadline: float, max_usd, max_tokens) -> Gateway | None:
    """The trial's LLM gateway, serving the providers the agent talks to that this host has keys (or a local
    server) for; None for an agent without a model, whose sandbox then has no way out at all."""
    if not agent_obj.gateway_providers:
        return None
    upstreams = {name: up for name, up in upstreams_from_env().items() if name in agent_obj.gateway_providers}
    limits = Limits(max_usd=spec.max_usd if max_usd is None else max_usd,
                    max_tokens=spec.max_tokens if max_tokens is None else max_tokens,
                    call_timeout_s=spec.call_timeout_s, deadline=deadline)
    return Gateway(run_dir, upstreams, limits)


def _record_model_use(meta: dict, gateway: Gateway | None, run_dir: Path, agent_obj, prompt: str) -> None:
    """Usage and cost by the gateway's count (not the agent's own report), the limit that stopped the agent,
    trajectory.json (ATIF) and the readable trace.md. Spend is the gateway's count only (meta["spend_usd"], the
    same as meta["usage"]["cost_usd"]): what an agent reports is kept as meta["reported_usage"], shown, never summed."""
    events = read_trace(run_dir / "trace.jsonl")
    summary = gateway.summary() if gateway is not None else None
    meta["gateway"] = summary
    meta["usage"] = summary["usage"] if summary else vars(Usage(cost_usd=0.0))
    meta["usage_source"] = "gateway" if summary else "none: an agent without a model"
    reported = total_usage(events)
    meta["reported_usage"] = vars(reported)
    if (not summary or summary["calls"] == 0) and reported.input_tokens + reported.output_tokens > 0:
        # a model the gateway never saw (the scripted provider, which needs no gateway): the agent's own token
        # count, for people; it spent nothing, since nothing left the sandbox but through a gateway
        meta["usage"] = {**vars(Usage(cost_usd=0.0)), "input_tokens": max(0, reported.input_tokens),
                         "output_tokens": max(0, reported.output_tokens)}
        meta["usage_source"] = "agent: tokens as it reported them; no gateway, so no spend"
    meta["spend_usd"] = (summary["usage"]["cost_usd"] or 0.0) if summary else 0.0
    meta["limit_reached"] = summary["stopped_by"] if summary else None
    from autoembed.gateway.usage import main_model, models_used

    meta["models"] = models_used(gateway.log_path) if gateway is not None else {}  # every model that answered
    meta["model"] = meta.get("model") or main_model(meta["models"])
    if any(m["usd"] is None for m in meta["models"].values()):  # unpriced: null, as in trajectory.json, never $0
        meta["usage"] = {**meta["usage"], "cost_usd": None}
    versions = meta.get("versions", {}).get("agent", {})
    name, version = agent_obj.identity(versions)  # the agent's own (a CLI's --version), not autoembed's
    agent_info = {"name": name, "version": version, "extra": {**versions, "autoembed": __version__}}
    if meta.get("model"):
        agent_info["model_name"] = meta["model"]
    trajectory.write(run_dir / "trajectory.json", session_id=meta["run_id"], agent=agent_info, prompt=prompt,
                     started=meta.get("agent_started_epoch"), events=events,
                     calls=trajectory.read_calls(gateway.bodies_path if gateway else None))
    (run_dir / "trace.md").write_text(render_markdown(events))


def _device_for(gpus: list[str] | None) -> str | None:
    return f"cuda:{gpus[0]}" if gpus else None


def _versions(agent_obj) -> dict:
    versions = {"autoembed": __version__, "python": platform.python_version(), "agent": agent_obj.versions()}
    for name in ("torch", "sentence-transformers", "transformers"):  # read, not imported: seconds before the agent starts
        try:
            versions[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = None
    versions["git_commit"] = _git(["rev-parse", "HEAD"]) or None
    # uncommitted changes to tracked files (a harness edited in place): the commit alone would not say what ran
    dirty = _git(["status", "--porcelain", "--untracked-files=no"])
    versions["git_dirty"] = None if dirty is None else bool(dirty)
    return versions


def _git(args: list[str]) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    # NaN refused, other values as str(): neither of write_json_atomic's modes, so the text is made here
    write_text_atomic(path, json.dumps(data, indent=2, default=str, allow_nan=False))
