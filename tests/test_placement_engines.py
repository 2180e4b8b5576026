"""Placement on real engines (no fakes of Docker or Slurm), opt in: AUTOEMBED_TEST_ENGINES=1 (.ci/run runs it after
the default suite; the second engine's first start copies the task's root filesystem image, ~2.6 GB, into it:
about a minute here).

- Two Docker engines: this machine's, and a second dockerd the test starts with its own data root, exec root, pid
  file and socket. A grid runs through both; each trial's container is found among the start events of the engine
  its record names. Then the second engine is stopped while a trial runs there: that trial is run again on the
  other engine, and its record lists both attempts.
- A single-host Slurm the test starts (munged, slurmctld, slurmd from Debian's packages, a generated slurm.conf):
  trials go through submitit as Slurm jobs, and each record names its job and node; a compare grid runs its trials
  there the same way; a trial whose job is cancelled or whose node goes down is run again elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from autoembed.integrity.second_engine import SecondEngine, engine_problem
from autoembed.placement.docker_engine import DockerPlace
from autoembed.placement.pool import Pool, run_pool
from autoembed.placement.slurm import SlurmPlace
from autoembed.sandbox.bwrap import bwrap_problem
from autoembed.sandbox.factory import docker_problem
from autoembed.trace import read_trace
from tests import slurm_testbed
from tests.test_placement import meta_of, quick_trial
from tests.tiny_task import keyless_tiny_task

pytestmark = pytest.mark.skipif(not os.environ.get("AUTOEMBED_TEST_ENGINES"),
                                reason="real-engine placement tests: set AUTOEMBED_TEST_ENGINES=1 (minutes)")

HOSTNAME_STEP = {"tool_calls": [{"name": "bash", "arguments": {"command": "hostname"}}]}
DONE = {"text": "Done."}


def container_id(run_dir: Path) -> str:
    """The container's hostname, which Docker sets to its id's first 12 characters, from the trial's trace."""
    results = [e.text for e in read_trace(Path(run_dir) / "trace.jsonl") if e.kind == "tool_result"]
    found = re.search(r"\b([0-9a-f]{12})\b", results[0])
    assert found, results
    return found.group(1)


def started_containers(place: DockerPlace, since: float) -> set[str]:
    events = place.client().events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                   filters={"type": "container", "event": "start", "label": "autoembed.sandbox=1"})
    return {e["id"][:12] for e in events}


@pytest.fixture(scope="module")
def second_engine():
    if docker_problem() or engine_problem():
        pytest.skip(docker_problem() or engine_problem())
    # a lasting data root: the task image is copied into it once per machine, not once per run
    engine = SecondEngine(Path(os.environ.get("AUTOEMBED_TEST_ENGINE_ROOT", "/var/tmp/ae-engine2")))
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture
def engines(second_engine, tmp_path_factory, monkeypatch):
    task = keyless_tiny_task(tmp_path_factory, monkeypatch)
    here = DockerPlace("engine1", os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    return task, here, DockerPlace("engine2", second_engine.url)


def test_a_grid_runs_through_two_docker_engines_each_trial_where_its_record_says(engines, tmp_path):
    task, one, two = engines
    t0 = time.time()
    specs = [{**quick_trial(tmp_path, task, f"t{i}", [HOSTNAME_STEP, DONE]), "sandbox": "auto"} for i in range(4)]
    dirs = run_pool(specs, [one, two])

    placed = {"engine1": set(), "engine2": set()}
    for run_dir in dirs:
        meta = meta_of(run_dir)
        assert meta["status"] == "scored" and meta["exit_reason"] == "finished", meta.get("reason")
        assert meta["sandbox"]["kind"] == "docker" and meta["placement"]["attempts"] == 1
        assert meta["placement"]["kind"] == "docker" and meta["placement"]["failed"] == []
        placed[meta["placement"]["place"]].add(container_id(run_dir))
    # both engines ran trials (a free slot takes the next trial, so the split depends on which finished first)
    assert placed["engine1"] and placed["engine2"] and len(placed["engine1"] | placed["engine2"]) == 4, placed
    assert placed["engine2"] == started_containers(two, t0), "engine2 ran exactly the trials placed on it"
    assert placed["engine1"] <= started_containers(one, t0)  # the shared engine also runs other tests' containers


def test_a_trial_on_an_engine_that_goes_down_is_rerun_on_the_other(engines, second_engine, tmp_path):
    task, one, two = engines
    slow = {"tool_calls": [{"name": "bash", "arguments": {"command": "hostname; sleep 25"}}]}
    specs = [{**quick_trial(tmp_path, task, name, [slow, DONE]), "sandbox": "auto"} for name in ("a", "b")]
    messages: list[str] = []
    pool = Pool([one, two], say=messages.append)

    def stop_engine_when_b_runs():
        end = time.time() + 600
        while time.time() < end:
            try:
                meta = meta_of(tmp_path / "b")
            except (OSError, ValueError):
                meta = {}
            if meta.get("status") == "running" and meta["placement"]["place"] == "engine2":
                time.sleep(3)  # the agent's command is under way in the container
                second_engine.stop()
                return
            time.sleep(0.5)

    killer = threading.Thread(target=stop_engine_when_b_runs)
    killer.start()
    a, b = pool.run_all(specs)
    killer.join()

    assert meta_of(a)["placement"]["place"] == "engine1" and meta_of(a)["placement"]["attempts"] == 1
    meta = meta_of(b)
    assert meta["status"] == "scored" and meta["exit_reason"] == "finished", meta.get("reason")
    placement = meta["placement"]
    assert (placement["place"], placement["attempts"]) == ("engine1", 2), placement
    [failure] = placement["failed"]
    assert failure["place"] == "engine2" and "does not answer" in failure["reason"]
    aside = Path(failure["run_dir"])
    assert aside == tmp_path / "b.attempt1" and meta_of(aside)["placement"]["place"] == "engine2"
    assert any("engine2 takes no more trials" in m for m in messages)


@pytest.fixture(scope="module")
def slurm():
    if slurm_testbed.problem():
        pytest.skip(slurm_testbed.problem())
    cluster = slurm_testbed.TestSlurm(Path(f"/tmp/ae-slurm-{secrets.token_hex(3)}")).start()
    yield cluster
    cluster.stop()


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")
def test_trials_run_as_slurm_jobs_through_submitit(slurm, tmp_path_factory, monkeypatch, tmp_path):
    task = keyless_tiny_task(tmp_path_factory, monkeypatch)
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    # the scorer's caches are prepared once here first, as the loop does: two jobs preparing them at once in a shared
    # AUTOEMBED_HOME race on the same temporary file, and one fails to start (it is then retried, but not on purpose)
    from autoembed.trial.run import _prepare_scorer_once
    from autoembed.task.spec import load_spec

    _prepare_scorer_once(load_spec(task), None, None, lambda msg: None)
    place = SlurmPlace("cluster", jobs=2, folder=tmp_path / "jobs", timeout_min=20)
    dirs = run_pool([quick_trial(tmp_path, task, f"s{i}", [HOSTNAME_STEP, DONE]) for i in range(2)], [place])

    jobs = set()
    for run_dir in dirs:
        meta = meta_of(run_dir)
        assert meta["status"] == "scored" and meta["exit_reason"] == "finished", (meta.get("reason"), slurm.logs())
        placement = meta["placement"]
        assert (placement["place"], placement["kind"], placement["attempts"]) == ("cluster", "slurm", 1)
        assert placement["node"] == socket.gethostname() and placement["gpu"] is None  # no GPUs: no gres here
        assert placement["job_id"].isdigit() and (tmp_path / "jobs" / placement["job_id"]).is_dir()
        assert meta["sandbox"]["kind"] == "bwrap"  # inside the job, the sandbox stays in the job's allocation
        jobs.add(placement["job_id"])
    assert len(jobs) == 2, "each trial is its own Slurm job"


def test_a_docker_engine_lost_mid_grid_loses_nothing(second_engine, tmp_path, monkeypatch):
    """The audit's case (autoembed/integrity/grid_case.py), on this module's second engine: `autoembed compare
    --places` over both engines, engine2 stopped while its trial's command runs; the trial runs again on engine1 and
    meta.json, the ledger, the cell's report and the comparison's leaderboard all say so."""
    from autoembed.integrity import bench as audit_bench, grid_case

    for name in ("AUTOEMBED_HOME", "AUTOEMBED_TRACES", "HF_HUB_OFFLINE"):  # the audit bench sets them: restored after
        monkeypatch.setenv(name, os.environ.get(name, ""))
    for name in audit_bench.KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    [row] = grid_case.engine_lost_mid_grid(audit_bench.Bench(tmp_path / "audit", say=print), second_engine)
    assert row.outcome == "survived", (row.reason, row.evidence)
    out = Path(row.evidence["compare"])
    [cell] = out.glob("cells/*")
    stopped = row.evidence["stopped_during"]
    assert json.loads((cell / "trials" / stopped / "meta.json").read_text())["placement"]["attempts"] == 2
    assert (cell / "trials" / f"{stopped}.attempt1").is_dir()


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")
@pytest.mark.parametrize("stop", ["scancel", "node down"])
def test_a_trial_whose_slurm_job_dies_is_rerun_elsewhere(stop, slurm, tmp_path_factory, monkeypatch, tmp_path):
    """The trial's job dies while its command runs: cancelled (scancel, as an admin or a preemption does), or its node
    lost (the single host's only node set DOWN by scontrol, which kills its jobs; set back to idle after). The pool
    retries the trial on the other place (this machine), and the record lists both attempts, the first with its job.
    (Inside the job the trial takes Slurm's SIGTERM as an interruption and ends early: that is the place's failure,
    not the trial's result.)"""
    import subprocess

    task = keyless_tiny_task(tmp_path_factory, monkeypatch)
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    from autoembed.placement.place import LocalPlace
    from autoembed.trial.run import _prepare_scorer_once
    from autoembed.task.spec import load_spec

    _prepare_scorer_once(load_spec(task), None, None, lambda msg: None)
    slow = {"tool_calls": [{"name": "bash", "arguments": {"command": "hostname; sleep 25"}}]}
    cancelled: list[str] = []

    def cancel_the_job_mid_command():
        end = time.time() + 600
        while time.time() < end and not cancelled:
            meta = {}
            try:
                meta = meta_of(tmp_path / "c")
            except (OSError, ValueError):
                pass
            trace = tmp_path / "c" / "trace.jsonl"
            job = (meta.get("placement") or {}).get("job_id")
            if job and meta.get("status") == "running" and trace.is_file() and "sleep 25" in trace.read_text():
                time.sleep(3)
                env = {**os.environ, **slurm.env}
                if stop == "scancel":
                    subprocess.run(["scancel", job], env=env, check=True, timeout=30)
                else:
                    subprocess.run(["scontrol", "update", f"nodename={socket.gethostname()}", "state=down",
                                    "reason=the test loses the node"], env=env, check=True, timeout=30)
                cancelled.append(job)
            time.sleep(0.5)

    killer = threading.Thread(target=cancel_the_job_mid_command)
    killer.start()
    messages: list[str] = []
    pool = Pool([SlurmPlace("cluster", jobs=1, folder=tmp_path / "jobs", timeout_min=20), LocalPlace("here")],
                say=messages.append)
    try:
        [run_dir] = pool.run_all([quick_trial(tmp_path, task, "c", [slow, DONE])])
    finally:
        killer.join()
        if stop == "node down":  # the other tests share the cluster
            subprocess.run(["scontrol", "update", f"nodename={socket.gethostname()}", "state=resume"],
                           env={**os.environ, **slurm.env}, timeout=30)

    assert cancelled, ("the job was never seen running its command", slurm.logs())
    meta = meta_of(run_dir)
    assert meta["status"] == "scored" and meta["exit_reason"] == "finished", meta.get("reason")
    placement = meta["placement"]
    assert (placement["place"], placement["kind"], placement["attempts"]) == ("here", "local", 2), placement
    [failure] = placement["failed"]
    assert failure["place"] == "cluster" and failure["kind"] == "slurm"
    assert f"job {cancelled[0]} " in failure["reason"], failure["reason"]
    aside = meta_of(failure["run_dir"])  # the cut-off attempt, kept for the record
    assert aside["placement"]["job_id"] == cancelled[0] and aside["placement"]["place_failed"] == failure["reason"]
    # the job's every process got Slurm's SIGTERM, the workdir's guard too: it outlived the trial and released it
    assert not os.path.ismount(Path(failure["run_dir"]) / "workdir") and not os.path.ismount(run_dir / "workdir")


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")
def test_a_compare_grid_runs_its_trials_as_slurm_jobs(slurm, tmp_path_factory, monkeypatch, tmp_path):
    """`autoembed compare --places` with a Slurm place: a 1x1 grid whose loop runs its two A/A baselines side by side,
    each trial a Slurm job through submitit; every record names its job, the ledger names the place, and the
    comparison's report is written."""
    import subprocess
    import sys

    from autoembed.integrity.bench import shell
    from autoembed.paths import REPO_ROOT
    from autoembed.trial.run import _prepare_scorer_once
    from autoembed.task.spec import load_spec

    task = keyless_tiny_task(tmp_path_factory, monkeypatch)
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    _prepare_scorer_once(load_spec(task), None, None, lambda msg: None)
    script = tmp_path / "base.task.json"
    script.write_text(json.dumps(shell("python3 -c \"import shutil, task; shutil.copytree(task.BASE_MODEL, "
                                       "'final_model')\" && hostname") + [DONE]))
    places = tmp_path / "places.toml"
    places.write_text(f'[[place]]\nname = "cluster"\nkind = "slurm"\njobs = 2\nfolder = "{tmp_path / "jobs"}"\n'
                      "timeout_min = 20\n")
    out = tmp_path / "compare"
    done = subprocess.run([sys.executable, "-m", "autoembed.cli", "compare", "--meta", "search", "--task",
                           f"scripted:{script}", "--hours", "0.5", "--trial-hours", "0.06", "--repeats", "1",
                           "--baseline-runs", "2", "--max-iterations", "0", "--sandbox", "bwrap", "--bench", str(task),
                           "--places", str(places), "--out", str(out)],
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, (done.stderr[-3000:], slurm.logs())
    [cell] = out.glob("cells/*")
    metas = [meta_of(p.parent) for p in sorted(cell.glob("trials/*/meta.json"))]
    assert len(metas) == 2, [m.get("run_id") for m in metas]
    jobs = set()
    for meta in metas:
        assert meta["status"] == "scored" and meta["exit_reason"] == "finished", (meta.get("reason"), slurm.logs())
        placement = meta["placement"]
        assert (placement["place"], placement["kind"], placement["attempts"]) == ("cluster", "slurm", 1)
        assert placement["job_id"].isdigit() and placement["node"] == socket.gethostname()
        jobs.add(placement["job_id"])
    assert len(jobs) == 2, "each trial is its own Slurm job"
    rows = [json.loads(line) for line in (cell / "ledger.jsonl").read_text().splitlines() if line.strip()]
    assert [r.get("place") for r in rows if r.get("trial_id")] == ["cluster", "cluster"], rows
    assert (out / "report" / "report.md").is_file()
