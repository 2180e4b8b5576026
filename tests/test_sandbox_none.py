"""sandbox 'none': runs in place, says loudly that integrity is not structural, and still honours
timeouts, the deadline and stop(). Also: 'auto' never falls back to it silently."""

from __future__ import annotations

import subprocess
import time

import pytest

from autoembed import paths
from autoembed.sandbox import factory
from autoembed.sandbox.base import SandboxConfig, SandboxError
from autoembed.sandbox.none import NoSandbox
from tests import sandbox_attacks as attacks


def make(workdir, seconds: float = 120, **kwargs) -> NoSandbox:
    return NoSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + seconds, **kwargs))


def test_start_warns_loudly(tmp_path, capsys):
    with make(tmp_path):
        pass
    err = capsys.readouterr().err
    assert "WARNING" in err and "not structurally protected" in err


def test_runs_in_place_with_the_users_rights(tmp_path):
    with make(tmp_path) as box:
        assert box.workdir_inside == str(tmp_path)
        assert box.exec("pwd").stdout.strip() == str(tmp_path)
        # What the warning says is true: the sealed folder is readable from here.
        assert box.exec(["test", "-e", str(paths.SEALED_DIR / "__init__.py")]).returncode == 0


def test_gpus_are_hidden_unless_given(tmp_path):
    with make(tmp_path) as box:
        assert box.exec(["printenv", "CUDA_VISIBLE_DEVICES"]).stdout.strip() == ""
    with make(tmp_path, gpus=["1", "3"]) as box:
        assert box.exec(["printenv", "CUDA_VISIBLE_DEVICES"]).stdout.strip() == "1,3"


def test_exec_timeout_kills_the_process_group(tmp_path):
    marker = attacks.digits()
    with make(tmp_path) as box:
        start = time.time()
        result = box.exec(f"sleep 600.{marker} & sleep 601.{marker}; echo never", timeout=1)
        assert result.timed_out and "never" not in result.stdout
        assert time.time() - start < 10
    assert attacks.wait_until(lambda: not attacks.host_pids_with(f".{marker}"), 5)


def test_exec_timeout_is_capped_by_the_deadline(tmp_path):
    with make(tmp_path, seconds=2) as box:
        start = time.time()
        assert box.exec("sleep 60", timeout=600).timed_out
        assert time.time() - start < 10


def test_stop_kills_spawned_processes(tmp_path):
    marker = attacks.digits()
    box = make(tmp_path)
    box.start()
    proc = box.spawn(["bash", "-c", f"sleep 700.{marker} & sleep 701.{marker}"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    assert attacks.wait_until(lambda: len(attacks.host_pids_with(f".{marker}")) >= 2, 5)
    box.stop()
    assert proc.poll() is not None
    assert attacks.wait_until(lambda: not attacks.host_pids_with(f".{marker}"), 5)



def test_stop_kills_what_outlived_its_group_leader_and_what_left_the_group(tmp_path):
    """What left a CLI agent running on a test machine for 50 minutes: its tool's search (ugrep over /var) went
    on after the agent exited. Here a command exits at once, leaving one child in its group and one in a session
    of its own (setsid); exec() returns, and stop() must still end both."""
    marker = attacks.digits()
    box = make(tmp_path)
    box.start()
    quiet = "< /dev/null > /dev/null 2>&1"
    result = box.exec(f"(sleep 710.{marker} {quiet} &); setsid sleep 711.{marker} {quiet} & exit 0", timeout=20)
    assert result.returncode == 0
    assert attacks.wait_until(lambda: len(attacks.host_pids_with(f".{marker}")) >= 2, 5)
    box.stop()
    assert attacks.wait_until(lambda: not attacks.host_pids_with(f".{marker}"), 5), attacks.host_pids_with(f".{marker}")

def test_make_sandbox_none_is_an_explicit_choice(tmp_path):
    box = factory.make_sandbox("none", SandboxConfig(workdir=tmp_path, deadline=time.time() + 60))
    assert isinstance(box, NoSandbox) and box.describe()["kind"] == "none"


def test_auto_never_falls_back_to_none(tmp_path, monkeypatch):
    import autoembed.sandbox.bwrap as bwrap

    monkeypatch.setattr(factory, "docker_problem", lambda: "no Docker engine answers (test)")
    monkeypatch.setattr(bwrap, "bwrap_problem", lambda: "bwrap is not installed (test)")
    with pytest.raises(SandboxError) as raised:
        factory.make_sandbox("auto", SandboxConfig(workdir=tmp_path, deadline=time.time() + 60))
    message = str(raised.value)
    assert "--sandbox none" in message and "no Docker engine" in message and "bwrap is not installed" in message


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(SandboxError, match="auto, docker, bwrap, none"):
        factory.make_sandbox("podman", SandboxConfig(workdir=tmp_path, deadline=time.time() + 60))
