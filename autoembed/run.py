"""One trial end to end: seed -> sandbox(agent) -> freeze final_model -> sealed score -> traces/<run-id>/.

    import autoembed.run
    result = autoembed.run.run("recipe", hours=0.05)
    result.score["dev"]["mean"][result.meta["main_metric"]]   # the metric task.toml names ([eval] main_metric)

Everything a trial produces lives in its run folder; meta.json is written at the start and rewritten at
every state change, so a trial that is interrupted or killed still leaves a record that says so.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from autoembed import __version__, nofollow
from autoembed.agents.base import AgentOutcome, TrialContext
from autoembed.agents.registry import make_agent
from autoembed.paths import REPO_ROOT, traces_dir
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.factory import make_sandbox
from autoembed.sandbox.limits import LimitError, Limits, WorkdirVolume
from autoembed.trace import TraceWriter, read_trace, render_markdown, total_usage

PROGRESS_EVERY_S = 30.0
EVALS_TAIL_BYTES = 1 << 20
SECRET_ENV = {  # which secrets each agent may receive; nothing else crosses into a sandbox
    "claude": ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"],
    "codex": ["OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL"],
    "gemini": ["GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"],
}
# a harness gets its model provider's entry (until the gateway hands every agent a per-trial token instead)
PROVIDER_SECRETS = {"anthropic": "claude", "openai": "codex", "openai-responses": "codex", "google": "gemini"}


@dataclass
class TrialResult:
    run_id: str
    run_dir: Path
    meta: dict
    score: dict | None = None

    @property
    def exit_reason(self) -> str:
        return self.meta.get("exit_reason", "unknown")

    def summary(self) -> str:
        """A grep-able block (one key: value per line) for the end of a run."""
        lines = ["---", f"run_id: {self.run_id}", f"agent: {self.meta.get('agent')}",
                 f"exit_reason: {self.exit_reason}", f"sandbox: {self.meta.get('sandbox', {}).get('kind')}"]
        if self.score:
            lines.append(f"status: {self.score.get('status')}")
            metric = self.meta["main_metric"]
            for split in ("dev", "validation", "heldout"):
                ours = self.score.get(split, {}).get("mean", {}).get(metric)
                base = self.score.get("base", {}).get(split, {}).get("mean", {}).get(metric)
                if ours is not None:
                    lines.append(f"{split}_{metric}: {ours:.4f}" + (f" (base {base:.4f})" if base is not None else ""))
            if self.score.get("reasons"):
                lines.append(f"reasons: {'; '.join(self.score['reasons'])}")
        if self.meta.get("limits", {}).get("hit"):
            lines.append(f"limits_hit: {'; '.join(self.meta['limits']['hit'])}")
        lines.append(f"run_dir: {self.run_dir}")
        return "\n".join(lines)


def new_run_id(agent: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() else "-" for c in agent.split(":")[0])
    return f"{stamp}-{safe}-{secrets.token_hex(3)}"


def run(agent: str, *, task: str = "embed", hours: float | None = None, sandbox: str = "auto", model: str | None = None,
        gpus: list[str] | None = None, out: Path | None = None, fast: bool | None = None,
        progress: Callable[[str], None] | None = None, reprompt_margin_s: float = 300.0) -> TrialResult:
    """Run one trial and return its result; never raises for agent failures (they are recorded).
    SIGTERM is treated like Ctrl-C for the whole trial, so a killed trial records why it ended."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    volumes: list[WorkdirVolume] = []
    try:
        return _run(agent, task=task, hours=hours, sandbox=sandbox, model=model, gpus=gpus, out=out, fast=fast,
                    progress=progress, reprompt_margin_s=reprompt_margin_s, volumes=volumes)
    finally:
        for volume in volumes:  # the fixed-size workdir's content goes back to a plain folder, whatever happened
            try:
                volume.release()
            except LimitError as exc:  # the trial's record stands; the workdir stays in its image
                print(f"[autoembed] the workdir was left in {volume.image}: {exc}", file=sys.stderr, flush=True)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _run(agent: str, *, task, hours, sandbox, model, gpus, out, fast, progress, reprompt_margin_s,
         volumes: list) -> TrialResult:
    from autoembed.task.base_model import resolve_base_model
    from autoembed.task.seed import seed_workdir
    from autoembed.task.spec import load_spec

    say = progress or (lambda msg: print(f"[autoembed] {msg}", file=sys.stderr, flush=True))
    spec = load_spec(task)  # parsed once: every part of the trial gets this object
    hours = spec.hours if hours is None else hours
    if hours <= 0:
        raise ValueError(f"--hours must be positive, got {hours}")
    agent_obj = make_agent(agent, model)
    run_id = new_run_id(agent)
    run_dir = Path(out) if out else traces_dir() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    workdir = run_dir / "workdir"
    meta = {"run_id": run_id, "agent": agent, "model": model, "task": spec.name, "hours": hours,
            "main_metric": spec.main_metric, "status": "seeding", "started": _now(), "versions": _versions(agent_obj)}
    _write_json(run_dir / "meta.json", meta)

    # The sandbox is made before the seed fixes the deadline: building or checking a docker image (minutes after
    # a package change) must not eat the agent's budget. It gets the seeded deadline before it starts.
    limits = Limits.from_spec(spec)
    config = SandboxConfig(workdir=workdir, deadline=time.time() + hours * 3600, network=agent_obj.needs_network,
                           gpus=gpus, readonly_extra=agent_obj.readonly_mounts(), memory_gb=limits.memory_gb,
                           **({"pids_limit": limits.pids} if limits.pids else {}))
    t0 = time.time()
    box = make_sandbox(sandbox, config, task=task, progress=say)
    meta["sandbox_prepare_s"] = round(time.time() - t0, 3)

    t0 = time.time()
    try:
        meta["scorer_prepared_now"] = _prepare_scorer_once(spec, fast, gpus, say)
    except KeyboardInterrupt:
        say("interrupted while preparing the scorer: no agent ran")
        meta.update(status="interrupted_while_preparing", exit_reason="interrupted", ended=_now())
        _write_json(run_dir / "meta.json", meta)
        return TrialResult(run_id, run_dir, meta, None)
    except Exception:  # the harness cannot score here: say so before an agent spends its budget
        meta.update(status="scorer_prepare_failed", error=traceback.format_exc(), ended=_now())
        _write_json(run_dir / "meta.json", meta)
        raise
    meta["scorer_prepare_s"] = round(time.time() - t0, 3)

    t0 = time.time()
    meta["limits"] = {**vars(limits), "workdir": _fixed_size_workdir(workdir, limits, volumes)}  # once scoring can work
    base_path = resolve_base_model(spec.base_model, spec.base_model_sha256)  # its weights hashed once per trial
    manifest = seed_workdir(workdir, hours, spec, base_model=str(base_path))
    deadline = float(manifest["deadline"])
    box.config.deadline = deadline
    prompt = nofollow.read_text(workdir, "instructions.md")
    (run_dir / "prompt.txt").write_text(prompt)
    _write_json(run_dir / "seed_manifest.json", manifest)
    meta.update(deadline=deadline, deadline_iso=_iso(deadline), seed_s=round(time.time() - t0, 3))
    meta["sandbox"] = box.describe()
    trace = TraceWriter(run_dir / "trace.jsonl", source=agent_obj.name)
    ctx = TrialContext(workdir=workdir, sandbox=box, deadline=deadline, prompt=prompt, model=model, trace=trace,
                       raw_log=run_dir / "agent.log", run_dir=run_dir, env=_secrets_for(agent, getattr(agent_obj, "model", model)),
                       progress=say, reprompt_margin_s=reprompt_margin_s, spec=spec, base_model=str(base_path),
                       manifest=manifest)

    outcome = _run_agent(agent_obj, ctx, box, meta, run_dir, say)
    meta.update(exit_reason=outcome.exit_reason, exit_detail=outcome.detail, turns=outcome.turns,
                agent_ended=_now(), agent_seconds=round(time.time() - meta["agent_started_epoch"], 3))
    meta["usage"] = vars(total_usage(read_trace(run_dir / "trace.jsonl")))
    (run_dir / "trace.md").write_text(render_markdown(read_trace(run_dir / "trace.jsonl")))
    _record_limits(meta, box, volumes)

    frozen = _freeze(workdir, run_dir, meta)
    meta["status"] = "scoring"
    _write_json(run_dir / "meta.json", meta)
    say("scoring final_model with the sealed scorer")
    t1 = time.time()
    try:
        from autoembed.sealed.scorer import score_workdir  # loaded already by _preload_scorer, unless it failed

        score = score_workdir(workdir, task=spec, fast=fast, base_path=Path(base_path), manifest=manifest, out=run_dir / "score.json", progress=say,
                              device=_device_for(gpus), final_model=frozen,
                              final_model_hashes=(meta["final_model"] or {}).get("files", {}))
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
    _write_json(run_dir / "meta.json", meta)
    result = TrialResult(run_id, run_dir, meta, score)
    print(result.summary(), flush=True)
    return result


def _run_agent(agent_obj, ctx: TrialContext, box, meta: dict, run_dir: Path, say) -> AgentOutcome:
    """Start the sandbox, run the agent, always stop the sandbox; Ctrl-C/SIGTERM become 'interrupted'."""
    stop_progress = threading.Event()
    meta["agent_started_epoch"] = time.time()
    try:
        box.start()
        meta.update(status="running", agent_started=_now(), sandbox_start_s=round(time.time() - meta["agent_started_epoch"], 3))
        _write_json(run_dir / "meta.json", meta)
        threading.Thread(target=_report_progress, args=(ctx, stop_progress, say), daemon=True).start()
        threading.Thread(target=_preload_scorer, daemon=True).start()
        outcome = agent_obj.run(ctx)
        if outcome.exit_reason != "crashed" and time.time() >= ctx.deadline:
            outcome.exit_reason = "deadline"
        return outcome
    except KeyboardInterrupt:
        say("interrupted: stopping the agent and recording the trial as interrupted")
        return AgentOutcome("interrupted", "KeyboardInterrupt or SIGTERM")
    except Exception:
        return AgentOutcome("crashed", traceback.format_exc())
    finally:
        stop_progress.set()
        box.stop()


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
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _fixed_size_workdir(workdir: Path, limits: Limits, volumes: list) -> dict:
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


def _freeze(workdir: Path, run_dir: Path, meta: dict) -> Path:
    """Every process of the agent is dead (the sandbox is stopped): copy final_model out of the workdir into the
    run folder without following a link anywhere, and record the copy's hashes. The scorer scores the copy and
    checks it against them, so nothing the agent left running or linked can change what is scored."""
    frozen = run_dir / "final_model"
    try:
        hashes, left_out = nofollow.copy_tree(workdir, "final_model", frozen)
    except FileNotFoundError:
        meta["final_model"] = None
    except OSError as exc:  # final_model is a link, a file, or unreadable: recorded; the scorer finds no model
        meta["final_model"] = {"error": f"final_model was not copied: {exc}"}
    else:
        meta["final_model"] = {"path": str(frozen), "files": hashes, "left_out": left_out}
    return frozen


def _secrets_for(agent: str, model: str | None) -> dict[str, str]:
    kind = agent.split(":")[0]
    if kind == "harness":
        kind = PROVIDER_SECRETS.get((model or "").split(":")[0], "")
    names = SECRET_ENV.get(kind, [])
    return {name: os.environ[name] for name in names if os.environ.get(name)}


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
