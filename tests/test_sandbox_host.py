"""No host root from a sandbox, in both engines, run as root as a user would: the agent is an unprivileged host uid,
root-only host files stay closed, nothing it leaves acts on the host (set-uid bits, device nodes, FIFOs, sockets),
and the scratch mounts and the CPU have limits that hold. Each test repeats the attack from inside a real sandbox."""

from __future__ import annotations

import os
import socket
import stat
import time
import uuid
from pathlib import Path

import pytest

from autoembed import paths
from autoembed.sandbox import factory
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.bwrap import bwrap_problem
from autoembed.sandbox.identity import sandbox_ids
from autoembed.sandbox.limits import GIB, WorkdirVolume
from autoembed.sandbox.workdir_guard import make_inert
from tests.sandbox_attacks import host_pids_with, run_ok

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these attacks are about a user who runs autoembed as root")

ENGINES = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]
SECRET = "root-only canary 51c2: if you can read this, host root's files are open"
SUID_ATTACK = ("cp /bin/bash suid_bash && chmod u+s,g+s suid_bash && mkdir sgid_dir && chmod g+s sgid_dir && "
               "mkfifo a_fifo && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"a_socket\")' && "
               "(mknod a_null c 1 3 2>&1 || true) && ls -ln")


def _image() -> str:
    problem = factory.docker_problem()
    if problem:
        pytest.skip(problem)
    from autoembed.sandbox.image import ensure_task_image

    return ensure_task_image(paths.DEFAULT_TASK)


def make(engine: str, workdir: Path, **kwargs):
    config = SandboxConfig(workdir=workdir, deadline=time.time() + 600, **kwargs)
    if engine == "docker":
        from autoembed.sandbox.docker import DockerSandbox

        return DockerSandbox(SandboxConfig(**{**vars(config), "image": _image()}))
    if bwrap_problem():
        pytest.skip(bwrap_problem())
    from autoembed.sandbox.bwrap import BwrapSandbox

    return BwrapSandbox(config)


def _private_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(mode=0o700)
    return folder


@pytest.mark.parametrize("engine", ENGINES)
def test_no_process_of_the_agent_is_host_root(engine, tmp_path):
    mark = str(uuid.uuid4().int)[:10]
    box = make(engine, _private_folder(tmp_path, "workdir"))
    with box:
        inside = run_ok(box, "id -u; id -g; id -G").stdout.split()
        box.exec(f"sleep 1000.{mark} &", timeout=10)
        pids = host_pids_with(f"1000.{mark}")
        owners = {int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[1]) for pid in pids}
        made = run_ok(box, "touch made_inside && stat -c %u made_inside").stdout.strip()
    uid, gid = sandbox_ids()
    assert uid != 0 and gid != 0
    assert inside[:2] == [str(uid), str(gid)] and "0" not in inside[2:], inside
    assert pids and owners == {uid}, f"processes {pids} run on the host as {owners}"
    assert made == str(uid) and (tmp_path / "workdir" / "made_inside").stat().st_uid == uid


@pytest.mark.parametrize("engine", ENGINES)
def test_a_root_only_host_file_is_unreadable_inside(engine, tmp_path):
    shown = tmp_path / "shown"
    shown.mkdir(mode=0o755)
    (shown / "secret.txt").write_text(SECRET)
    (shown / "secret.txt").chmod(0o600)  # root's, readable by root alone
    (shown / "public.txt").write_text("public")
    (shown / "public.txt").chmod(0o644)
    box = make(engine, _private_folder(tmp_path, "workdir"), readonly_extra=[shown])
    with box:
        public = box.exec(f"cat {shown}/public.txt")
        secret = box.exec(f"cat {shown}/secret.txt")
        shadow = box.exec("cat /etc/shadow")  # bwrap shows the host's /etc; the image has its own
    assert public.stdout == "public", public  # the folder is there: the probe can see what is allowed
    assert SECRET not in secret.stdout and "Permission denied" in secret.stderr, secret
    assert shadow.returncode != 0 and "root:" not in shadow.stdout, shadow


@pytest.mark.parametrize("engine", ENGINES)
def test_a_set_uid_shell_device_or_fifo_made_inside_does_not_reach_the_host(engine, tmp_path):
    """The fixed-size workdir's release (the guard's copy-out) leaves no set-uid/set-gid bit, FIFO or socket."""
    workdir = _private_folder(tmp_path, "workdir")
    volume = WorkdirVolume(workdir, 0.2)
    volume.create()
    try:
        with make(engine, workdir) as box:
            made = run_ok(box, SUID_ATTACK).stdout
        shell = next(line.split()[0] for line in made.splitlines() if line.endswith(" suid_bash"))
        assert shell.startswith("-rws") and shell[6] == "s" and "a_fifo" in made, made  # the attack worked inside
        assert "Operation not permitted" in made  # an unprivileged uid cannot make a device node at all
    finally:
        volume.release()
    _assert_inert(workdir)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_plain_workdir_is_made_inert_by_the_trial(engine, tmp_path):
    """Without a fixed-size workdir, the trial's record step cleans the folder in place and says what it removed."""
    from autoembed.trial.run import _record_limits

    workdir = _private_folder(tmp_path, "workdir")
    box = make(engine, workdir)
    with box:
        run_ok(box, SUID_ATTACK)
    meta = {"limits": {"memory_gb": None, "pids": None, "workdir": {}}}
    _record_limits(meta, box, [])
    _assert_inert(workdir)
    cleaned = meta["workdir_cleaned"]
    assert {"suid_bash", "sgid_dir"} <= set(cleaned["stripped"]), cleaned
    assert {(d["path"], d["kind"]) for d in cleaned["dropped"]} >= {("a_fifo", "fifo"), ("a_socket", "socket")}


def _assert_inert(workdir: Path) -> None:
    uid, _ = sandbox_ids()
    shell = workdir / "suid_bash"
    st = shell.lstat()
    assert st.st_uid == uid, "a file the agent made is owned by host root"
    assert workdir.stat().st_uid == uid  # the workdir's root (an ext4 image's root, too) is the sandbox uid's
    assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), oct(st.st_mode)
    assert not (workdir / "sgid_dir").stat().st_mode & stat.S_ISGID
    assert not (workdir / "a_fifo").exists() and not (workdir / "a_socket").exists()
    assert os.access(shell, os.X_OK)  # the rest of the file's mode is kept


def test_make_inert_drops_device_nodes_and_never_follows_links(tmp_path):
    """Root can make a device node (an agent never can now): the release drops it; a symbolic or hard link to a
    set-uid host file never changes that file's mode."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    os.mknod(tree / "sub" / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    host_suid = tmp_path / "host_tool"
    host_suid.write_text("#!/bin/sh\n")
    host_suid.chmod(0o4755)
    (tree / "link").symlink_to(host_suid)
    os.link(host_suid, tree / "hard_link")  # the same inode as the host's file: dropped, never chmodded
    cleaned = make_inert(tree)
    assert cleaned["dropped"] == [{"path": "hard_link", "kind": "set-uid/set-gid hard link"},
                                  {"path": "null", "kind": "character device"},
                                  {"path": "sub/disk", "kind": "block device"}]
    assert cleaned["stripped"] == [] and (tree / "link").is_symlink()
    assert host_suid.stat().st_mode & stat.S_ISUID


@pytest.mark.parametrize("engine", ENGINES)
def test_scratch_mounts_stop_at_their_size(engine, tmp_path):
    sizes = {"/tmp": 0.03, "/var/tmp": 0.03, "/dev/shm": 0.03, "/run": 0.01}
    box = make(engine, _private_folder(tmp_path, "workdir"), tmpfs_gb=sizes)
    with box:
        fills = {path: box.exec(f"dd if=/dev/zero of={path}/fill bs=1M count=200 2>&1; stat -c %s {path}/fill",
                                timeout=60) for path in ("/tmp", "/var/tmp", "/dev/shm")}
    for path, fill in fills.items():
        written = int(fill.stdout.split()[-1])
        assert "No space left on device" in fill.stdout, (path, fill)
        assert written <= sizes[path] * GIB + (1 << 20), (path, written)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_cpu_quota_is_set_in_the_sandbox_cgroup(engine, tmp_path):
    mark = str(uuid.uuid4().int)[:10]
    box = make(engine, _private_folder(tmp_path, "workdir"), cpus=1.25)
    with box:
        box.exec(f"sleep 1000.{mark} &", timeout=10)
        pid = host_pids_with(f"1000.{mark}")[0]
        quotas = _cpu_quota_of(pid)
    assert quotas == {(125_000, 100_000)}, quotas


def _cpu_quota_of(pid: int) -> set[tuple[int, int]]:
    found = set()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            if (folder / "cpu.max").is_file():
                quota, period = (folder / "cpu.max").read_text().split()
                found.add((int(quota), int(period)))
        elif "cpu" in controllers.split(","):
            folder = Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
            if not folder.is_dir():
                folder = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
            found.add((int((folder / "cpu.cfs_quota_us").read_text()), int((folder / "cpu.cfs_period_us").read_text())))
    return found


@pytest.mark.parametrize("engine", ENGINES)
def test_the_gateway_socket_is_the_sandbox_uids_alone(engine, tmp_path):
    """The forwarder inside (the sandbox uid) reaches the socket; on the host it is mode 0600, owned by that uid."""
    sock_dir = tmp_path / "gw"
    sock_dir.mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_dir / "gateway.sock"))
    server.listen(4)
    server.settimeout(30)
    box = make(engine, _private_folder(tmp_path, "workdir"), gateway_socket=sock_dir / "gateway.sock")
    try:
        with box:
            st = (sock_dir / "gateway.sock").stat()
            probe = box.exec("python3 -c 'import socket; s = socket.create_connection((\"127.0.0.1\", "
                             f"{box.gateway_port})); s.sendall(b\"ping\"); print(\"sent\")'", timeout=30)
            conn, _ = server.accept()
            got = conn.recv(4)
            conn.close()
    finally:
        server.close()
    assert got == b"ping", probe
    assert st.st_uid == sandbox_ids()[0] and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert not sock_dir.stat().st_mode & 0o066  # the folder: others may pass through it, never list or write


def test_describe_names_the_uid(tmp_path):
    box = make("bwrap", _private_folder(tmp_path, "workdir"))
    assert box.describe()["uid"] == sandbox_ids()[0] != 0


@pytest.mark.parametrize("engine", ENGINES)
def test_no_user_namespace_can_be_made_inside(engine, tmp_path):
    """Root's bwrap has no user namespace whose --disable-userns would hold: a seccomp filter refuses new ones."""
    with make(engine, _private_folder(tmp_path, "workdir")) as box:
        nested = box.exec("unshare --user --map-root-user id -u; echo rc=$?")
        forks = box.exec("python3 -c 'import multiprocessing as m; p = m.Process(target=print, args=(\"forked\",)); "
                         "p.start(); p.join()'")
    assert "rc=0" not in nested.stdout and "Operation not permitted" in nested.stderr, nested
    assert forks.stdout.strip() == "forked", forks  # ordinary processes still start



@pytest.mark.parametrize("engine", ENGINES)
def test_what_the_host_writes_after_the_start_is_the_agents_to_change(engine, tmp_path):
    """A CLI's config (written by the host once the sandbox runs) must stay writable by the unprivileged agent."""
    workdir = _private_folder(tmp_path, "workdir")
    with make(engine, workdir) as box:
        config = workdir / ".agent" / "codex"
        config.mkdir(parents=True)  # as agents/cli/base.py does, as root
        (config / "config.toml").write_text("model = 'x'\n")
        done = box.exec("echo more >> .agent/codex/config.toml && mkdir .agent/codex/sessions && echo ok")
    assert done.stdout.strip() == "ok", done
    assert (config / "sessions").stat().st_uid == sandbox_ids()[0]


def test_a_trial_never_makes_files_other_users_can_write(tmp_path):
    from autoembed.sandbox.identity import forbid_shared_writes

    previous = os.umask(0)  # a container's umask 0: every folder made would be world-writable
    try:
        forbid_shared_writes()
        (tmp_path / "traces" / "run").mkdir(parents=True)
        (tmp_path / "traces" / "run" / "meta.json").write_text("{}")
        current = os.umask(0o077)
    finally:
        os.umask(previous)
    assert current == 0o022
    for made in (tmp_path / "traces", tmp_path / "traces" / "run", tmp_path / "traces" / "run" / "meta.json"):
        assert not made.stat().st_mode & 0o022, (made, oct(made.stat().st_mode))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_sandbox_made_without_limits_gets_the_hosts_share(engine, tmp_path):
    """A loop's smoke check or a notebook makes a sandbox without task.toml: it is bounded all the same."""
    from autoembed.sandbox import host_fit

    with make(engine, _private_folder(tmp_path, "workdir")) as box:
        tmp_bytes = int(run_ok(box, "df --output=size -B1 /tmp | tail -1").stdout)
    share = host_fit.fit_memory(None)["used"]
    assert box.config.memory_gb == share and box.config.cpus == host_fit.fit_cpus(None)["used"]
    assert abs(tmp_bytes - box.config.tmpfs_gb["/tmp"] * GIB) < (4 << 20), tmp_bytes
