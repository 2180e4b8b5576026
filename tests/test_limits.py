"""Resource limits that hold inside the sandbox: memory (a hog is OOM-killed), processes (a fork bomb is refused)
and the workdir's size (`fallocate` far past it fails and the host's disk does not move), each recorded as hit.
Docker's memory and pid limits are tested in test_sandbox.py; here its limit events are read back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.bwrap import BwrapSandbox, bwrap_problem
from autoembed.sandbox.limits import Cgroup, LimitError, WorkdirVolume
from autoembed.task.spec import load_spec

pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")

HOG = "python3 -c \"x = bytearray(800 * 2**20); x[::4096] = b'x' * len(x[::4096]); print('survived')\""
FORK_BOMB = "for i in $(seq 150); do sleep 20 & done 2>&1 | tail -1; echo forks-done"


def cgroups_usable() -> str | None:
    probe = Cgroup(0.1, 10)
    try:
        probe.create()
    except LimitError as exc:
        return str(exc)
    probe.remove()
    return None


def test_the_embed_task_declares_its_limits():
    spec = load_spec("embed")
    assert spec.memory_gb and spec.pids and spec.disk_gb


@pytest.mark.skipif(cgroups_usable() is not None, reason=f"no cgroups here: {cgroups_usable()}")
def test_bwrap_memory_and_process_limits_hold_and_are_recorded(tmp_path):
    box = BwrapSandbox(SandboxConfig(workdir=tmp_path, deadline=time.time() + 120, memory_gb=0.25, pids_limit=64))
    box.start()
    try:
        hog = box.exec(HOG, timeout=60)
        bomb = box.exec(FORK_BOMB, timeout=60)
        calm = box.exec("echo still-fine", timeout=30)
    finally:
        box.stop()
    assert "survived" not in hog.stdout and hog.returncode != 0, hog
    assert "forks-done" in bomb.stdout and "Resource temporarily unavailable" in bomb.stdout + bomb.stderr, bomb
    assert calm.stdout.strip() == "still-fine"
    limits = box.describe()["limits"]
    assert limits["enforced"] and limits["events"]["oom_kills"] >= 1 and limits["events"]["pids_refused"] >= 1, limits


@pytest.mark.skipif(os.geteuid() != 0, reason="a fixed-size workdir needs root (loop mount)")
def test_fixed_size_workdir_refuses_a_huge_file_and_keeps_the_host_disk(tmp_path):
    volume = WorkdirVolume(tmp_path / "workdir", size_gb=0.25)
    volume.create()
    try:
        (volume.workdir / "kept.txt").write_text("agent output")
        (volume.workdir / "link").symlink_to("/etc/hostname")
        host_free = shutil.disk_usage(tmp_path).free
        box = BwrapSandbox(SandboxConfig(workdir=volume.workdir, deadline=time.time() + 60))
        with box:
            big = box.exec("fallocate -l 50G big.bin; echo rc=$?; dd if=/dev/zero of=fill bs=1M count=400 2>&1 | tail -1",
                           timeout=60)
        assert "rc=1" in big.stdout and "No space left" in big.stdout + big.stderr, big
        assert shutil.disk_usage(tmp_path).free > host_free - 300 * 2**20
        assert volume.usage()["full"]
    finally:
        volume.release()
    assert not volume.image.exists() and not os.path.ismount(volume.workdir)
    assert (volume.workdir / "kept.txt").read_text() == "agent output"
    assert Path(volume.workdir / "link").is_symlink()  # copied back as a link, never followed


@pytest.mark.docker
def test_docker_limit_hits_are_read_back_before_the_container_goes(tmp_path):
    from autoembed import paths
    from autoembed.sandbox import factory

    if factory.docker_problem():
        pytest.skip(factory.docker_problem())
    from autoembed.sandbox.image import ensure_task_image

    config = SandboxConfig(workdir=tmp_path, deadline=time.time() + 120, memory_gb=0.25, pids_limit=64,
                           image=ensure_task_image(paths.DEFAULT_TASK, progress=lambda line: None))
    box = factory.make_sandbox("docker", config)
    box.start()
    try:
        hog = box.exec(HOG, timeout=60)
        bomb = box.exec(FORK_BOMB, timeout=60)
    finally:
        box.stop()
    assert "survived" not in hog.stdout and "forks-done" in bomb.stdout
    events = box.describe()["limits"]["events"]
    assert events["oom_kills"] >= 1 and events["pids_refused"] >= 1, events


OWNER = """
import sys, time
from pathlib import Path
from autoembed.sandbox.limits import WorkdirVolume
volume = WorkdirVolume(Path(sys.argv[1]), size_gb=0.1)
volume.create()
(volume.workdir / "final_model").mkdir()
(volume.workdir / "final_model" / "weights.bin").write_bytes(b"w" * 4096)
(volume.workdir / "link").symlink_to("/etc/hostname")
print("mounted", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a fixed-size workdir needs root (loop mount)")
def test_a_sigkilled_owner_leaves_no_mount_and_loses_no_output(tmp_path):
    """The loop or a trial killed with SIGKILL (its whole process group): the guard releases the workdir."""
    workdir = tmp_path / "trial-0001" / "workdir"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(workdir)], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert owner.stdout.readline().strip() == "mounted"
        assert os.path.ismount(workdir)
    finally:
        os.killpg(owner.pid, signal.SIGKILL)
        owner.wait()
    deadline = time.time() + 60
    released = lambda: not (os.path.ismount(workdir) or workdir.with_name("workdir.img").exists()  # noqa: E731
                            or workdir.with_name("workdir.out").exists())  # the last step: the copy takes its place
    while not released() and time.time() < deadline:
        time.sleep(0.2)
    assert not os.path.ismount(workdir), "the workdir is still mounted after its owner was killed"
    assert not workdir.with_name("workdir.img").exists() and not workdir.with_name("workdir.out").exists()
    assert (workdir / "final_model" / "weights.bin").read_bytes() == b"w" * 4096
    assert (workdir / "link").is_symlink()
    shutil.rmtree(tmp_path / "trial-0001")  # nothing busy is left behind


@pytest.mark.skipif(os.geteuid() != 0, reason="a fixed-size workdir needs root (loop mount)")
def test_a_release_cut_short_finishes_when_run_again(tmp_path):
    from autoembed.sandbox import workdir_guard

    volume = WorkdirVolume(tmp_path / "workdir", size_gb=0.1)
    volume.create()
    (volume.workdir / "kept.txt").write_text("agent output")
    partial = tmp_path / "workdir.out"
    partial.mkdir()
    (partial / "half-copied").write_text("x")  # a first release killed mid-copy
    workdir_guard.release(volume.workdir, volume.image)
    assert not os.path.ismount(volume.workdir) and not volume.image.exists() and not partial.exists()
    assert sorted(p.name for p in volume.workdir.iterdir()) == ["kept.txt"]
    volume.release()  # the owner's own release after that: the guard finds nothing left to do
    assert (volume.workdir / "kept.txt").read_text() == "agent output"


@pytest.mark.skipif(os.geteuid() != 0, reason="a fixed-size workdir needs root (loop mount)")
def test_a_dead_guard_does_not_leave_the_workdir_mounted(tmp_path):
    volume = WorkdirVolume(tmp_path / "workdir", size_gb=0.1)
    volume.create()
    (volume.workdir / "kept.txt").write_text("agent output")
    volume._guard.kill()  # e.g. the kernel's OOM killer chose it
    volume._guard.wait()
    volume.release()
    assert not os.path.ismount(volume.workdir) and not volume.image.exists()
    assert (volume.workdir / "kept.txt").read_text() == "agent output"


# -- limits that fit the host ---------------------------------------------------------------------
def test_a_task_asking_more_memory_than_the_machine_has_is_clamped_and_recorded(tmp_path):
    """task.toml asks 32 GiB; on a 23.5 GiB machine the trial gets the host's share and meta.json says why."""
    from autoembed.sandbox import host_fit
    from autoembed.sandbox.limits import Limits

    fitted = host_fit.fit_memory(32, total_gb=23.5)
    assert fitted["requested"] == 32 and fitted["used"] == round(23.5 - 2.35, 2)
    assert fitted["reason"].startswith("clamped: 32 GiB asked, MemTotal 23.5 GiB")
    halved = host_fit.fit_memory(32, concurrent=2, total_gb=23.5)
    assert halved["used"] == round((23.5 - 2.35) / 2, 2) and "2 trial(s) side by side" in halved["reason"]
    # the embed task on this machine, as a trial fits it (the record meta.json gets is vars(limits))
    limits = Limits.from_spec(load_spec("embed"), disk_folder=tmp_path)
    total = host_fit.mem_total_gb()
    assert limits.memory_gb == min(32, round(total - max(2.0, 0.1 * total), 2))
    assert limits.fit["memory_gb"]["requested"] == 32 and limits.fit["memory_gb"]["used"] == limits.memory_gb
    assert limits.cpus and limits.cpus < host_fit.host_cpus() and limits.fit["cpus"]["requested"] is None
    assert sum(limits.tmpfs_gb.values()) < limits.memory_gb
    assert set(limits.tmpfs_gb) == {"/tmp", "/var/tmp", "/dev/shm", "/run"}
    assert limits.disk_gb <= limits.fit["disk_gb"]["used"] and limits.fit["disk_gb"]["requested"] == 50


def test_a_workdir_larger_than_the_free_disk_is_clamped(tmp_path):
    from autoembed.sandbox import host_fit

    st = os.statvfs(tmp_path)
    free_gb = st.f_bavail * st.f_frsize / 2**30
    fitted = host_fit.fit_disk(free_gb * 10, tmp_path)
    assert fitted["used"] < free_gb and fitted["reason"].startswith("clamped:")
    assert host_fit.fit_disk(0.5, tmp_path)["used"] == 0.5  # a small one fits as asked


def test_limits_settings_are_checked(tmp_path):
    import shutil as _shutil

    task = tmp_path / "task"
    _shutil.copytree(load_spec("embed").root, task, ignore=_shutil.ignore_patterns("data", "environment"))
    toml = (task / "task.toml").read_text()
    (task / "task.toml").write_text(toml.replace("pids = 4096", "pids = 4096\ncpus = 3"))
    assert load_spec(task).cpus == 3.0
    (task / "task.toml").write_text(toml.replace("pids = 4096", "pids = 4096\ncpu = 3"))
    with pytest.raises(ValueError, match=r"\[limits\] has no setting cpu; the settings are cpus, disk_gb"):
        load_spec(task)
    (task / "task.toml").write_text(toml.replace("pids = 4096", "pids = 4096\ncpus = 0"))
    with pytest.raises(ValueError, match="cpus must be a positive number"):
        load_spec(task)
