"""docker sandbox: a real engine, the real task image, real escape attempts. Every attempt must fail.

The image is built once per machine (cached by content hash; .ci/sandbox.sh builds it before the
tests), and rebuilt in seconds on top of the cached base when the autoembed package changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from autoembed import paths
from autoembed.sandbox import factory
from autoembed.sandbox.base import SandboxConfig, SandboxError
from tests import sandbox_attacks as attacks

pytestmark = pytest.mark.docker

EXTRA_HIDDEN = Path("/usr/share/zoneinfo")  # in the image; hidden through SandboxConfig.hidden


@pytest.fixture(scope="session")
def image():
    problem = factory.docker_problem()
    if problem:
        pytest.skip(f"{problem} (CI runs .ci/sandbox.sh, which installs and starts the engine)")
    from autoembed.sandbox.image import ensure_task_image

    return ensure_task_image(paths.DEFAULT_TASK)


def make(image: str, workdir: Path, seconds: float = 900, **kwargs):
    from autoembed.sandbox.docker import DockerSandbox

    return DockerSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + seconds, image=image, **kwargs))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("docker-workdir")


@pytest.fixture(scope="module")
def sandbox(image, workdir):
    box = make(image, workdir, hidden=[EXTRA_HIDDEN], memory_gb=6)
    box.start()
    yield box
    box.stop()


# -- what must work ----------------------------------------------------------------------------------
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


def test_limits_are_applied(sandbox):
    attrs = sandbox._client.api.inspect_container(sandbox._container.id)["HostConfig"]
    assert attrs["Memory"] == 6 * 1024 ** 3
    assert attrs["PidsLimit"] == 4096
    assert attrs["CapDrop"] == ["ALL"] and "no-new-privileges" in attrs["SecurityOpt"]
    assert attrs["NetworkMode"] == "none" and attrs["ReadonlyRootfs"] is True


def test_pids_limit_stops_a_fork_bomb(image, tmp_path):
    script = ("import os, time\nn = 0\ntry:\n    for _ in range(500):\n        if os.fork() == 0:\n"
              "            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n")
    with make(image, tmp_path, pids_limit=64) as box:
        forked = int(attacks.run_ok(box, ["python3", "-c", script]).stdout.strip())
    assert forked < 64


# -- escapes -----------------------------------------------------------------------------------------
def test_capabilities_are_dropped(sandbox):
    attacks.check_no_capabilities(sandbox)


def test_sealed_folder_is_not_in_the_image(sandbox, sealed_canary):
    attacks.check_sealed_unreadable(sandbox, sealed_canary)
    assert sandbox.exec("test -e /opt/autoembed/autoembed/sealed").returncode != 0
    assert sandbox.exec("python3 -c 'import autoembed.sealed'").returncode != 0


def test_cannot_read_home_or_earlier_traces(sandbox, trace_file):
    attacks.check_home_and_traces_unreadable(sandbox, trace_file)


def test_extra_hidden_path_is_empty(sandbox):
    assert attacks.run_ok(sandbox, f"ls -A {EXTRA_HIDDEN}").stdout.strip() == ""


def test_system_text_is_not_in_the_image(sandbox):
    for folder in ("/usr/share/man", "/usr/share/doc", "/var/lib/dpkg", "/var/lib/apt", "/var/cache", "/opt/pypi",
                   "/work", "/home"):
        listing = sandbox.exec(f"ls -A {folder} 2>/dev/null").stdout.strip()
        assert listing == "", f"{folder} shows inside: {listing[:200]}"


def test_cannot_write_outside_the_workdir(sandbox):
    attacks.check_cannot_write_outside(sandbox)


def test_cannot_unmount_what_hides(sandbox):
    attacks.check_cannot_unmount(sandbox, EXTRA_HIDDEN, EXTRA_HIDDEN / "UTC")


def test_no_network(sandbox):  # the gateway, the one way out, is tested in test_gateway_sandbox.py
    attacks.check_no_network(sandbox)


def test_nothing_outlives_the_deadline(image, tmp_path):
    marker = attacks.digits()
    box = make(image, tmp_path, seconds=6)
    box.start()
    attacks.start_stray_processes(box, marker)
    # No stop(): the deadline alone must end everything and remove the container.
    assert attacks.wait_until(lambda: not attacks.host_pids_with(f"1000.{marker}"), 20), \
        attacks.host_pids_with(f"1000.{marker}")
    assert attacks.wait_until(lambda: not _container_exists(box), 20)
    box.stop()


def test_stop_kills_everything_and_removes_the_container(image, tmp_path):
    marker = attacks.digits()
    box = make(image, tmp_path)
    box.start()
    attacks.start_stray_processes(box, marker)
    box.stop()
    assert attacks.wait_until(lambda: not attacks.host_pids_with(f"1000.{marker}"), 5), \
        attacks.host_pids_with(f"1000.{marker}")
    assert not _container_exists(box)
    box.stop()  # idempotent
    with pytest.raises(SandboxError):
        box.exec("true")


def test_agent_cannot_kill_the_sandbox_from_inside(image, tmp_path):
    with make(image, tmp_path) as box:
        box.exec("kill -9 -1; kill -9 1; true")
        assert box.exec("echo still-here").stdout.strip() == "still-here"


def test_heldout_text_is_not_in_the_image(sandbox, workdir):
    sample = attacks.heldout_sample(100)  # as cheap as 20: grep -F matches all at once
    if not sample:
        pytest.skip("no held-out data yet under autoembed/sealed/data/heldout/*/corpus.jsonl.gz")
    hits = attacks.grep_heldout_inside(sandbox, workdir, sample)
    assert hits == [], f"held-out passages are readable inside the container in: {hits}"


# -- choosing it ---------------------------------------------------------------------------------------
def test_auto_prefers_docker(image, tmp_path):
    box = factory.make_sandbox("auto", SandboxConfig(workdir=tmp_path, deadline=time.time() + 60))
    assert box.kind == "docker" and box.config.image == image


def _container_exists(box) -> bool:
    import docker

    try:
        box._client.api.inspect_container(box._container.id)
        return True
    except docker.errors.NotFound:
        return False
