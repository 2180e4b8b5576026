"""The two sandbox engines, bwrap and docker: real bubblewrap, a real Docker engine with the real task image, real
escape attempts. Every attempt must fail.

The attacks both engines must stop are one test each, parametrized over the engine (`-k bwrap` or `-k docker` runs
one engine; the checks themselves live in tests/sandbox_attacks.py, which other sandbox tests share). What only
one engine has (Docker's container limits and image, bwrap's bind mounts of this host) is tested at the end, for
that engine alone. The Docker image is built once per machine (cached by content hash; .ci/sandbox.sh builds it
before the tests) and rebuilt in seconds on top of the cached base when the autoembed package changed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoembed import paths
from autoembed.sandbox import factory, hidden
from autoembed.sandbox.base import SandboxConfig, SandboxError
from autoembed.sandbox.deadline import StopOnce
from autoembed.sandbox.layout import runtime_paths
from tests import sandbox_attacks as attacks

EXTRA_HIDDEN = Path("/usr/share/zoneinfo")  # an ordinary visible folder (and in the image), hidden through
# SandboxConfig.hidden

BWRAP = pytest.param("bwrap", marks=pytest.mark.bwrap, id="bwrap")
DOCKER = pytest.param("docker", marks=pytest.mark.docker, id="docker")
only_bwrap = pytest.mark.parametrize("engine", [BWRAP], indirect=True)
only_docker = pytest.mark.parametrize("engine", [DOCKER], indirect=True)


@dataclass(frozen=True)
class Engine:
    name: str
    image: str | None = None  # docker's task image
    deadline_s: float = 4.0  # the deadline of a sandbox that must end by itself
    ends_within_s: float = 10.0  # after that deadline, its processes are gone within this
    sandbox_kwargs: tuple = ()  # the shared sandbox's extra SandboxConfig fields

    def make(self, workdir: Path, seconds: float = 900, **kwargs):
        config = SandboxConfig(workdir=workdir, deadline=time.time() + seconds, image=self.image, **kwargs)
        if self.name == "docker":
            from autoembed.sandbox.docker import DockerSandbox

            return DockerSandbox(config)
        from autoembed.sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(config)

    def hidden_to_unmount(self, sealed_canary: Path) -> tuple[Path, Path]:
        """A hidden folder and a file in it. bwrap covers sealed/ with a tmpfs, which an agent could try to lift;
        the image has no sealed/ at all, so for docker it is the extra hidden folder."""
        if self.name == "bwrap":
            return paths.SEALED_DIR, sealed_canary
        return EXTRA_HIDDEN, EXTRA_HIDDEN / "UTC"

    def container_left(self, box) -> bool:
        """docker: the container still exists (it must be removed at stop and at the deadline); bwrap makes no
        object besides its processes, which the tests check directly."""
        if self.name != "docker":
            return False
        import docker

        try:
            box._client.api.inspect_container(box._container.id)
            return True
        except docker.errors.NotFound:
            return False


@pytest.fixture(scope="session")
def bwrap_engine():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed: apt-get install -y bubblewrap (CI runs .ci/sandbox.sh)")
    return Engine("bwrap")


@pytest.fixture(scope="session")
def docker_engine():
    problem = factory.docker_problem()
    if problem:
        pytest.skip(f"{problem} (CI runs .ci/sandbox.sh, which installs and starts the engine)")
    from autoembed.sandbox.image import ensure_task_image

    return Engine("docker", image=ensure_task_image(paths.DEFAULT_TASK), deadline_s=6.0, ends_within_s=20.0,
                  sandbox_kwargs=(("memory_gb", 6),))


@pytest.fixture(scope="module", params=[BWRAP, DOCKER])
def engine(request) -> Engine:
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture(scope="module")
def workdir(engine, tmp_path_factory):
    return tmp_path_factory.mktemp(f"{engine.name}-workdir")


@pytest.fixture(scope="module")
def sandbox(engine, workdir, sealed_canary, trace_file):
    box = engine.make(workdir, hidden=[EXTRA_HIDDEN], **dict(engine.sandbox_kwargs))
    box.start()
    yield box
    box.stop()


# -- what must work, on both ---------------------------------------------------------------------------
def test_workdir_is_writable_at_a_fixed_path(sandbox, workdir):
    attacks.check_workdir_writable(sandbox, workdir)
    assert sandbox.workdir_inside == "/workdir"
    assert attacks.run_ok(sandbox, "echo $HOME").stdout.strip() == "/workdir/.home"


def test_python_stack_and_autoembed_task_work_inside(sandbox):
    attacks.check_python_stack(sandbox)


def test_background_job_survives_between_calls(sandbox):
    attacks.check_background_job_survives_between_calls(sandbox)


def test_exec_timeout_kills_the_command(sandbox):
    attacks.check_exec_timeout(sandbox)


def test_spawn_streams_output_and_kill_reaches_inside(sandbox):
    attacks.check_spawn_streams_and_kill(sandbox)


# -- escapes, on both ------------------------------------------------------------------------------------
def test_capabilities_are_dropped(sandbox):
    attacks.check_no_capabilities(sandbox)


def test_cannot_read_or_list_the_sealed_folder(sandbox, sealed_canary):
    attacks.check_sealed_unreadable(sandbox, sealed_canary)


def test_cannot_read_home_or_earlier_traces(sandbox, trace_file):
    attacks.check_home_and_traces_unreadable(sandbox, trace_file)


def test_extra_hidden_path_is_empty(sandbox, engine):
    if engine.name == "bwrap":  # the positive control: bwrap binds this host's /usr, where the folder has files
        assert any(EXTRA_HIDDEN.iterdir())
    assert attacks.run_ok(sandbox, f"ls -A {EXTRA_HIDDEN}").stdout.strip() == ""



def test_the_agent_has_a_user_name(sandbox):
    """The sandbox uid has no passwd entry; what asks for the user's name (getpass, as torch's compile cache does on
    import) gets one instead of KeyError 'getpwuid(): uid not found', which crashed every GPU trial on a box whose
    torch asks."""
    result = attacks.run_ok(sandbox, "python3 -c 'import getpass; print(getpass.getuser())'")
    assert result.stdout.strip() == "agent", result

def test_cannot_write_outside_the_workdir(sandbox):
    attacks.check_cannot_write_outside(sandbox)


def test_cannot_unmount_what_hides(sandbox, engine, sealed_canary):
    attacks.check_cannot_unmount(sandbox, *engine.hidden_to_unmount(sealed_canary))


def test_no_network(sandbox):  # the gateway, the one way out, is tested in test_gateway_sandbox.py
    attacks.check_no_network(sandbox)


def test_heldout_text_is_not_on_the_filesystem_the_agent_sees(sandbox, workdir):
    sample = attacks.heldout_sample(100)  # as cheap as 20: grep -F matches all at once
    if not sample:
        pytest.skip("no held-out data yet under autoembed/sealed/data/heldout/*/corpus.jsonl.gz")
    hits = attacks.grep_heldout_inside(sandbox, workdir, sample)
    assert hits == [], f"held-out passages are readable inside the sandbox in: {hits}"


def test_nothing_outlives_the_deadline(engine, tmp_path):
    marker = attacks.digits()
    box = engine.make(tmp_path, seconds=engine.deadline_s)
    box.start()
    attacks.start_stray_processes(box, marker)
    # No stop(): the deadline alone must end everything (docker: and remove the container).
    assert attacks.wait_until(lambda: not attacks.host_pids_with(f"1000.{marker}"), engine.ends_within_s), \
        attacks.host_pids_with(f"1000.{marker}")
    assert attacks.wait_until(lambda: not engine.container_left(box), engine.ends_within_s)
    result = box.exec("echo late")
    assert result.timed_out and "late" not in result.stdout
    box.stop()


def test_stop_kills_everything(engine, tmp_path):
    marker = attacks.digits()
    box = engine.make(tmp_path)
    box.start()
    attacks.start_stray_processes(box, marker)
    box.stop()
    assert attacks.wait_until(lambda: not attacks.host_pids_with(f"1000.{marker}"), 5), \
        attacks.host_pids_with(f"1000.{marker}")
    assert not engine.container_left(box)
    box.stop()  # idempotent
    with pytest.raises(SandboxError):
        box.exec("true")


def test_agent_cannot_kill_the_sandbox_from_inside(engine, tmp_path):
    with engine.make(tmp_path) as box:
        box.exec("kill -9 -1; kill -9 1; true")
        assert box.exec("echo still-here").stdout.strip() == "still-here"


# -- the deadline, one home for both engines (autoembed/sandbox/deadline.py) -------------------------------
def test_the_deadline_stops_a_sandbox_once_whoever_comes_first():
    once, stops = StopOnce(), []

    def stop():  # an engine's stop(): only the first caller tears down
        if once.claim():
            stops.append(time.time())

    once.arm(time.time() + 0.2, stop)
    assert attacks.wait_until(lambda: stops, 5) and once.stopped
    stop()  # a stop() after the deadline's does nothing
    assert len(stops) == 1


def test_a_stop_before_the_deadline_cancels_its_timer():
    once, fired = StopOnce(), []
    once.arm(time.time() + 0.3, lambda: fired.append(once.claim()))
    assert once.claim() and not once.claim()
    time.sleep(0.8)
    assert fired == []


# -- bwrap only: it binds parts of this host, and it is the fallback ----------------------------------------
@only_bwrap
def test_environment_is_clean(sandbox, monkeypatch):
    monkeypatch.setenv("HOST_SECRET_TOKEN", "must-not-leak")
    env = attacks.run_ok(sandbox, "env").stdout
    assert "HOST_SECRET_TOKEN" not in env and "must-not-leak" not in env
    assert "HF_HUB_OFFLINE=1" in env and "CUDA_VISIBLE_DEVICES=\n" in env + "\n"


@only_bwrap
def test_system_text_is_hidden(sandbox):
    for folder in ("/usr/share/man", "/usr/share/doc", "/var/lib/dpkg", "/var/lib/apt", "/var/cache", "/opt"):
        listing = sandbox.exec(f"ls -A {folder} 2>/dev/null").stdout.split()
        # Only the way down to a runtime folder may show (a Python venv in /opt/torch/.venv, say).
        allowed = {p.relative_to(folder).parts[0] for p in runtime_paths() if hidden.is_within(p, Path(folder))
                   and p != Path(folder)}
        assert set(listing) <= allowed, f"{folder} shows inside: {listing[:20]}"
    # Of the repo only the package shows (for `import autoembed.task`): no .git, traces, data builds.
    assert attacks.run_ok(sandbox, f"ls -A {paths.REPO_ROOT}").stdout.split() == ["autoembed"]


@only_bwrap
def test_installed_heldout_wheels_are_hidden(sandbox):
    """Every package the held-out code set is built from is hidden wherever it is installed (optuna pulls in
    sqlalchemy at the very version held out); the list must follow the data's own record of those wheels."""
    import json

    from autoembed.sandbox.hidden import HELDOUT_PYTHON_PACKAGES, installed_heldout_packages

    lock = json.loads((Path(__file__).resolve().parents[1] / "data" / "sources.lock.json").read_text())
    assert set(HELDOUT_PYTHON_PACKAGES) == set(lock["pypi_heldout_wheels"])
    for path in installed_heldout_packages():
        assert path.exists()  # the host has it; inside it must be empty
        result = sandbox.exec(["sh", "-c", f"ls -A '{path}' | wc -l"])
        assert result.stdout.strip() == "0", f"{path} is visible inside the sandbox"


@only_bwrap
def test_sigterm_reaches_the_command_and_its_real_exit_status_comes_back(sandbox):
    """A 'save and stop' SIGTERM must not kill the launcher first: the caller would see -15 while the
    command inside is still saving (the recipe agent then thought train.py had died without a model)."""
    # the handler only notes the signal and the saving happens in the main flow, as a training script does it. A
    # handler that printed failed now and then in whole-suite runs under load (exit 1, "reentrant call inside
    # BufferedWriter": a second SIGTERM during its print); where that second signal comes from is not established
    code = ("import signal, sys, time\nasked = []\n"
            "signal.signal(signal.SIGTERM, lambda *_: asked.append(1))\nprint('ready', flush=True)\n"
            "for _ in range(600):\n    time.sleep(0.1)\n    if asked: break\n"
            "print('saving', flush=True); time.sleep(1); print('saved', flush=True); sys.exit(3 if asked else 4)\n")
    proc = sandbox.spawn(["python3", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout.readline().strip() == b"ready"
    proc.terminate()
    assert proc.wait(timeout=30) == 3
    assert proc.stdout.read().split() == [b"saving", b"saved"]


@only_bwrap
def test_exec_timeout_is_capped_by_the_deadline(engine, tmp_path):
    with engine.make(tmp_path, seconds=3) as box:
        start = time.time()
        result = box.exec("sleep 60", timeout=600)
        assert result.timed_out
        assert time.time() - start < 10


@only_bwrap
def test_gpu_mode_binds_no_disks(engine, tmp_path):
    with engine.make(tmp_path, gpus=["0"]) as box:
        assert box.exec("find /dev -type b").stdout.strip() == ""
        assert box.exec("echo $CUDA_VISIBLE_DEVICES").stdout.strip() == "0"


@only_bwrap
def test_gpu_mode_keeps_the_driver_library_path(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/nvidia/lib64")
    with engine.make(tmp_path, gpus=["0"]) as box:
        assert box.exec("echo $LD_LIBRARY_PATH").stdout.strip() == "/usr/local/nvidia/lib64"
    with engine.make(tmp_path) as box:
        assert box.exec("echo ${LD_LIBRARY_PATH:-unset}").stdout.strip() == "unset"


@only_bwrap
def test_start_rejects_a_missing_workdir(engine, tmp_path):
    with pytest.raises(SandboxError, match="does not exist"):
        engine.make(tmp_path / "missing").start()


@only_bwrap
def test_auto_falls_back_to_bwrap_when_no_engine_answers(engine, tmp_path, monkeypatch):
    from autoembed.sandbox.bwrap import BwrapSandbox

    monkeypatch.setattr(factory, "docker_problem", lambda: "no Docker engine answers (test)")
    messages = []
    box = factory.make_sandbox("auto", SandboxConfig(workdir=tmp_path, deadline=time.time() + 60),
                               progress=messages.append)
    assert isinstance(box, BwrapSandbox) and box.describe()["kind"] == "bwrap"
    assert messages and "no Docker engine" in messages[0]


# -- docker only: the container's own limits and the image ------------------------------------------------
@only_docker
def test_limits_are_applied(sandbox):
    attrs = sandbox._client.api.inspect_container(sandbox._container.id)["HostConfig"]
    assert attrs["Memory"] == 6 * 1024 ** 3
    assert attrs["PidsLimit"] == 4096
    assert attrs["CapDrop"] == ["ALL"] and "no-new-privileges" in attrs["SecurityOpt"]
    assert attrs["NetworkMode"] == "none" and attrs["ReadonlyRootfs"] is True


@only_docker
def test_pids_limit_stops_a_fork_bomb(engine, tmp_path):
    script = ("import os, time\nn = 0\ntry:\n    for _ in range(500):\n        if os.fork() == 0:\n"
              "            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n")
    with engine.make(tmp_path, pids_limit=64) as box:
        forked = int(attacks.run_ok(box, ["python3", "-c", script]).stdout.strip())
    assert forked < 64


@only_docker
def test_sealed_package_is_not_in_the_image(sandbox):
    assert sandbox.exec("test -e /opt/autoembed/autoembed/sealed").returncode != 0
    assert sandbox.exec("python3 -c 'import autoembed.sealed'").returncode != 0


@only_docker
def test_system_text_is_not_in_the_image(sandbox):
    for folder in ("/usr/share/man", "/usr/share/doc", "/var/lib/dpkg", "/var/lib/apt", "/var/cache", "/opt/pypi",
                   "/work", "/home"):
        listing = sandbox.exec(f"ls -A {folder} 2>/dev/null").stdout.strip()
        assert listing == "", f"{folder} shows inside: {listing[:200]}"


@only_docker
def test_auto_prefers_docker(engine, tmp_path):
    box = factory.make_sandbox("auto", SandboxConfig(workdir=tmp_path, deadline=time.time() + 60))
    assert box.kind == "docker" and box.config.image == engine.image
