"""Injected faults: each breaks something under a real trial (or loop) and must end survived: a recorded state
(meta.json says what happened and why, the trace, trajectory and score.json are written) with nothing lost."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from autoembed.integrity.bench import Bench, load_json, program, read_agent_json, timed
from autoembed.integrity.outcome import ERROR, FAULT, Row
from autoembed.sandbox.procs import pids_with_cmdline

SAVE_BASE = "import shutil, task\nshutil.copytree(task.BASE_MODEL, 'final_model')\nprint('saved final_model')\n"


def record_problems(run_dir: Path) -> list[str]:
    """What a finished trial's folder lacks: the records every trial must leave whatever happened to it."""
    problems = []
    meta = load_json(run_dir / "meta.json")
    if meta is None:
        return ["meta.json is missing or unreadable"]
    if meta.get("status") != "scored":
        problems.append(f"meta.json status {meta.get('status')} (expected scored): {meta.get('score_error', '')[-200:]}")
    for key in ("exit_reason", "ended", "agent_ended"):
        if not meta.get(key):
            problems.append(f"meta.json has no {key}")
    for name in ("trace.jsonl", "trajectory.json", "trace.md", "agent.log", "score.json"):
        if not (run_dir / name).is_file():
            problems.append(f"{name} is missing")
    if load_json(run_dir / "trajectory.json") is None:
        problems.append("trajectory.json is not readable JSON")
    return problems


def _verdict(name: str, run_dir: Path, seconds: float, checks: list[str], what: str) -> Row:
    problems = record_problems(run_dir) + checks
    if problems:
        return Row(name, FAULT, "lost", "; ".join(problems), seconds, {"run_dir": str(run_dir)})
    return Row(name, FAULT, "survived", what, seconds, {"run_dir": str(run_dir)})


# -- the sandbox killed mid-trial -----------------------------------------------------------------
def sandbox_killed(bench: Bench) -> list[Row]:
    """The agent saves a model, then runs a long command; the host SIGKILLs the bwrap process that holds the sandbox."""
    name = "the sandbox killed mid-trial (SIGKILL to bwrap)"
    mark = f"1002.{os.getpid()}{int(time.time()) % 100000}"
    killed: list[int] = []
    stop = threading.Event()
    folder = bench.cases / "fault-sandbox-killed"

    def killer():
        while not stop.wait(0.3):
            if not _pids_with(f"sleep {mark}"):
                continue
            time.sleep(1.0)
            for pid in _pids_with("bwrap", str(folder)):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with timed() as clock:
        try:
            result, _ = bench.scripted_trial("fault-sandbox-killed", program(SAVE_BASE, then=f"sleep {mark}"))
        except Exception as exc:  # noqa: BLE001
            return [Row(name, FAULT, ERROR, f"the trial did not run: {type(exc).__name__}: {exc}")]
        finally:
            stop.set()
            thread.join()
    meta = result.meta
    if not killed:
        return [Row(name, FAULT, ERROR, f"the sandbox was never killed (exit {meta.get('exit_reason')})", clock())]
    checks = []
    if meta.get("exit_reason") not in ("crashed", "deadline") or not meta.get("exit_detail"):
        checks.append(f"exit_reason {meta.get('exit_reason')} does not say the agent died: {meta.get('exit_detail')}")
    if not ((meta.get("final_model") or {}).get("files") or {}).get("model.safetensors"):
        checks.append("the model saved before the kill was not frozen")
    detail = " ".join((meta.get("exit_detail") or "").split())[:120]
    return [_verdict(name, result.run_dir, clock(), checks,
                     f"killed bwrap {killed}; meta.json: {meta.get('exit_reason')} ({detail}); the model saved before "
                     f"the kill was frozen and scored ({(result.score or {}).get('status')})")]


# -- CUDA out of memory in the agent's training ----------------------------------------------------
OOM_TRAIN = """
import torch
from sentence_transformers import SentenceTransformer
import task
model = SentenceTransformer(task.BASE_MODEL, device="cpu")
for step in range(3):
    if step == 1:  # what torch raises when a CUDA allocation fails
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.35 GiB total capacity)")
model.save("final_model")
"""


def gpu_oom(bench: Bench) -> list[Row]:
    """The agent's training dies with CUDA OOM; the agent then falls back to the base model as its submission."""
    name = "GPU out of memory in the agent's training"
    steps = program(OOM_TRAIN, name="train.py") + program(SAVE_BASE, name="fallback.py")
    with timed() as clock:
        try:
            result, _ = bench.scripted_trial("fault-gpu-oom", steps)
        except Exception as exc:  # noqa: BLE001
            return [Row(name, FAULT, ERROR, f"the trial did not run: {type(exc).__name__}: {exc}")]
    trace = (result.run_dir / "trace.jsonl").read_text(errors="replace") if (result.run_dir / "trace.jsonl").is_file() else ""
    checks = [] if "CUDA out of memory" in trace else ["the OOM traceback is not in the trace"]
    if result.meta.get("exit_reason") != "finished":
        checks.append(f"the agent did not go on after the OOM: {result.meta.get('exit_reason')}")
    return [_verdict(name, result.run_dir, clock(), checks,
                     "the OutOfMemoryError and its traceback are in the trace (the tool result the agent read); the "
                     f"agent went on, finished, and its fallback model was scored ({(result.score or {}).get('status')})")]


# -- the disk full while final_model is saved ------------------------------------------------------
DISK_FULL = """
import os, shutil, task
free = shutil.disk_usage(".").free
with open("checkpoint_shards.bin", "wb") as fh:  # the workdir nearly full: 20 MB left
    os.posix_fallocate(fh.fileno(), 0, max(0, free - 20 * 1024 * 1024))
from sentence_transformers import SentenceTransformer
SentenceTransformer(task.BASE_MODEL, device="cpu").save("final_model")  # 90 MB: fails part-way
"""


def disk_full(bench: Bench) -> list[Row]:
    name = "the disk full while final_model is saved"
    with timed() as clock:
        try:
            result, _ = bench.scripted_trial("fault-disk-full", program(DISK_FULL))
        except Exception as exc:  # noqa: BLE001
            return [Row(name, FAULT, ERROR, f"the trial did not run: {type(exc).__name__}: {exc}")]
    meta, score = result.meta, result.score or {}
    hit = (meta.get("limits") or {}).get("hit") or []
    checks = [] if any(h.startswith("disk") for h in hit) else [f"meta.json limits.hit does not say the disk was full: {hit}"]
    if score.get("status") != "broken" or score.get("scored_as") != "base_model":
        checks.append(f"the half-saved model was not recorded as broken: {score.get('status')} {score.get('reasons')}")
    reason = (score.get("reasons") or ["?"])[0]
    return [_verdict(name, result.run_dir, clock(), checks,
                     f"meta.json: {hit[0] if hit else '?'}; score.json broken, scored as the base model: {reason[:120]}")]


def _pids_with(*needles: str) -> list[int]:
    if needles[0] == "bwrap":
        return pids_with_cmdline(*needles[1:], program="bwrap")
    return pids_with_cmdline(*needles)


FAULTS = {"sandbox killed": sandbox_killed, "gpu oom": gpu_oom, "disk full": disk_full}


# -- LLM API errors mid-trial: 429, 529, a hung call, a dropped connection ---------------------------------
CHAOS_PRICE = "claude-audit-chaos=3,15"  # the gateway refuses a model without a price; the chaos model is given one
KEY_HUNT = """
import glob, json, os
seen = [f"{k}={v}" for k, v in os.environ.items()]
for proc_file in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        seen.append(open(proc_file, "rb").read().decode(errors="replace"))
    except OSError:
        pass
for root in ("/workdir", os.getcwd(), "/tmp", "/run", "/etc"):
    for path in glob.glob(root + "/**", recursive=True)[:5000]:
        try:
            if os.path.isfile(path) and os.path.getsize(path) < 1_000_000:
                seen.append(open(path, "rb").read().decode(errors="replace"))
        except OSError:
            pass
hits = [s[:80] for s in seen if CANARY in s]
json.dump({"key_found": hits, "gateway_vars": sorted(k for k in os.environ if "ANTHROPIC" in k)},
          open("key_hunt.json", "w"))
import shutil, task
shutil.copytree(task.BASE_MODEL, "final_model")
"""


def llm_faults(bench: Bench) -> list[Row]:
    """The harness talks to its model through the trial's gateway; the upstream answers 429, 529, hangs past the
    gateway's call timeout, drops the connection mid-response, then works. The agent must ride through all four and
    finish; the gateway must count the failures; and the key it holds must be nowhere inside (an attack row)."""
    from autoembed.integrity.chaos_upstream import ChaosUpstream
    from autoembed.integrity.escape import KEY_CANARY, _env

    fault_name = "LLM API errors mid-trial (429, 529, a hung call, a dropped connection)"
    key_name = "read the gateway's credentials from inside"
    # reversed in the program's text, so the program file (which the hunt reads too) does not hold the key itself
    hunt = f"CANARY = {KEY_CANARY[::-1]!r}[::-1]\n" + KEY_HUNT
    plan = [{"fault": "429"}, {"fault": "529"}, {"fault": "hang"}, {"fault": "drop", "text": "lost"},
            *program(hunt, name="hunt.py"), {"text": "Finished."}]
    with ChaosUpstream(plan, hang_s=30) as upstream, \
            _env(ANTHROPIC_API_KEY=KEY_CANARY, ANTHROPIC_BASE_URL=upstream.base_url, AUTOEMBED_PRICES=CHAOS_PRICE), \
            timed() as clock:
        try:
            result, _ = bench.scripted_trial("fault-llm-api", [], model="anthropic:claude-audit-chaos", hours=0.08)
        except Exception as exc:  # noqa: BLE001
            return [Row(fault_name, FAULT, ERROR, f"the trial did not run: {type(exc).__name__}: {exc}"),
                    Row(key_name, "attack", ERROR, "the trial did not run")]
        seen = list(upstream.seen)
    meta = result.meta
    gateway = meta.get("gateway") or {}
    faults_seen = [s["what"] for s in seen if s["what"] != "reply"]
    report = read_agent_json(result.run_dir / "workdir", "key_hunt.json")
    checks = []
    if sorted(faults_seen) != sorted(["429", "529", "hang", "drop"]):
        checks.append(f"the upstream saw faults {faults_seen}, not all four: the plan did not run")
    if meta.get("exit_reason") != "finished":
        checks.append(f"the agent did not ride through: {meta.get('exit_reason')}: {(meta.get('exit_detail') or '')[-200:]}")
    if report is None:
        checks.append("the agent's work after the faults is missing (no key_hunt.json)")
    rows = [_verdict(fault_name, result.run_dir, clock(), checks,
                     f"the upstream served {faults_seen}; the agent retried and finished; the gateway counted "
                     f"{gateway.get('calls')} calls, {gateway.get('errors')} errors, {gateway.get('call_timeouts')} call timeouts "
                     f"(meta.json gateway)")]
    keys_upstream = {s["key"] for s in seen}
    if report is None:
        rows.append(Row(key_name, "attack", ERROR, "the key hunt left no report", clock()))
    elif report.get("key_found") or keys_upstream != {KEY_CANARY}:
        rows.append(Row(key_name, "attack", "not stopped", f"found inside: {report.get('key_found')}; keys upstream "
                                                           f"{keys_upstream}", clock()))
    else:
        rows.append(Row(key_name, "attack", "blocked",
                        "the gateway sent the key upstream on every call, and it is in no environment, /proc "
                        "entry or file inside: the agent holds a per-trial token", clock()))
    return rows


FAULTS["llm api errors"] = llm_faults


# -- the gateway killed mid-trial ---------------------------------------------------------------------
def gateway_killed(bench: Bench) -> list[Row]:
    """The harness saves a model, then waits on a model call that hangs upstream; the audit stops the trial's LLM
    gateway (its real server, in the trial's process) under it. The trial must notice, stop the agent rather than
    let it retry into nothing, and end crashed with the reason naming the gateway, its records and the gateway's log
    up to the stop kept, and the trial's exit code non-zero."""
    from autoembed.trial import summary
    from autoembed.integrity.chaos_upstream import ChaosUpstream
    from autoembed.integrity.escape import KEY_CANARY, _env

    name = "the trial's LLM gateway stopped mid-trial (its server shut while the agent waits on a call)"
    folder = bench.cases / "fault-gateway-killed"
    stopped: list[str] = []
    done = threading.Event()

    def stop_gateway(upstream: ChaosUpstream) -> None:
        if not upstream.hanging.wait(600) or done.is_set():
            return
        gateway = _gateway_under(folder)
        if gateway is not None:
            gateway.stop()
            stopped.append(str(gateway.log_dir))

    plan = [*program(SAVE_BASE, name="save.py"), {"fault": "hang"}]
    with ChaosUpstream(plan, hang_s=120) as upstream, \
            _env(ANTHROPIC_API_KEY=KEY_CANARY, ANTHROPIC_BASE_URL=upstream.base_url, AUTOEMBED_PRICES=CHAOS_PRICE), \
            timed() as clock:
        thread = threading.Thread(target=stop_gateway, args=(upstream,), daemon=True)
        thread.start()
        try:
            result, _ = bench.scripted_trial("fault-gateway-killed", [], model="anthropic:claude-audit-chaos", hours=0.08)
        except Exception as exc:  # noqa: BLE001
            return [Row(name, FAULT, ERROR, f"the trial did not run: {type(exc).__name__}: {exc}")]
        finally:
            done.set()
            upstream.hanging.set()
            thread.join()
    meta = result.meta
    if not stopped:
        return [Row(name, FAULT, ERROR, f"the gateway was never stopped (exit {meta.get('exit_reason')})", clock())]
    log = result.run_dir / "gateway.jsonl"
    calls = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    detail = (meta.get("exit_detail") or "").strip().splitlines()
    checks = []
    if meta.get("exit_reason") != "crashed" or not detail or "gateway" not in detail[-1]:
        checks.append(f"exit_reason {meta.get('exit_reason')} does not name the gateway: {detail[-1:] or 'no detail'}")
    if len(calls) < 2:
        checks.append(f"the gateway's log holds {len(calls)} calls, not the 2 answered before it stopped")
    code = summary.exit_code(meta, result.score)
    if code == 0:
        checks.append("the trial's exit code is 0: a trial cut off from its model counted as clean")
    return [_verdict(name, result.run_dir, clock(), checks,
                     f"meta.json: crashed ({detail[-1][:140] if detail else ''}); the gateway's log kept its "
                     f"{len(calls)} calls up to the stop; trace, trajectory and score.json written; exit code {code}")]


def _gateway_under(folder: Path):
    """The running LLM gateway of the trial in folder: the trial runs in this process, its Gateway among its objects."""
    import gc

    from autoembed.gateway.server import Gateway

    for obj in gc.get_objects():
        if type(obj) is Gateway and folder in obj.log_dir.parents and obj.lost() is None:  # type(): no lazy module wakes
            return obj
    return None


FAULTS["gateway stopped"] = gateway_killed
