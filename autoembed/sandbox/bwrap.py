"""bubblewrap: one long-lived sandbox per trial, entered with nsenter for every command.

start() runs `bwrap ... -- setpriv ... python -c REAPER`: a fresh mount, PID, network, IPC, UTS and cgroup
namespace (and a user namespace when not run by root) whose root holds only /usr and /etc (read-only), this
Python's install and the autoembed package (read-only, sealed/ covered by an empty tmpfs), a private /tmp, and the
workdir, writable, at
/workdir. Its network namespace has loopback only; the LLM gateway's socket folder is bound at /gateway
and a forwarder inside serves it on 127.0.0.1 (see base.Sandbox.start_forwarder). exec() and spawn() join those namespaces with nsenter and drop every capability with
setpriv, so background jobs survive between calls exactly as in Docker, and killing the
namespace's PID 1 at stop() or at the deadline kills everything the agent started, double-forked,
setsid'd and nohup'd processes included.

Run by root, bwrap makes no user namespace (a namespace made by root maps the agent to host uid 0): root sets up the
mounts, and PID 1 and every command then become the unprivileged sandbox uid (identity.py) through setpriv, with no
capabilities. The agent is that uid on the host: root-only files stay closed, and a set-uid file it makes is its own.
The scratch mounts (/tmp, /var/tmp, /dev/shm, /run) have the sizes in SandboxConfig.tmpfs_gb, the cgroup a CPU quota.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoembed import paths
from autoembed.sandbox import identity, layout, no_userns
from autoembed.sandbox.base import GATEWAY_DIR_INSIDE, ExecResult, Sandbox, SandboxError
from autoembed.sandbox.deadline import StopOnce
from autoembed.sandbox.hidden import hidden_paths, is_within
from autoembed.sandbox.limits import GIB, Cgroup, LimitError
from autoembed.sandbox.procs import REAPER, GroupPopen, communicate_or_kill, kill_pid, read_until, wait_gone

WORKDIR_INSIDE = "/workdir"
START_TIMEOUT_S = 20.0
DROP_CAPABILITIES = ["--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
# bwrap run by root (no user namespace) keeps only what setpriv needs to become the sandbox uid, then drops it
SWITCH_USER_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
UNSHARE_ALL_BUT_USER = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]


def drop_privileges(uid: int, gid: int) -> list[str]:
    """setpriv argv that makes the caller the sandbox uid (a no-op change when it is already) with no capabilities."""
    switch = [] if (uid, gid) == (os.getuid(), os.getgid()) else [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    return [shutil.which("setpriv") or "setpriv", *switch, *DROP_CAPABILITIES, "--"]


class BwrapSandbox(Sandbox):
    kind = "bwrap"

    def __init__(self, config):
        super().__init__(config)
        self._bwrap: subprocess.Popen | None = None
        self._init_pid: int | None = None  # host PID of the sandbox's PID 1
        self._procs: list[subprocess.Popen] = []
        self._once = StopOnce()  # stop() or the deadline, whichever comes first, tears it down once
        self._stderr = None
        self._cgroup: Cgroup | None = None
        self.limits: dict = {}  # what was enforced and what was hit, for describe()
        self.uid, self.gid = identity.sandbox_ids()  # never 0 when run as root: the agent's host identity

    @property
    def workdir_inside(self) -> str:
        return WORKDIR_INSIDE

    def ids(self) -> tuple[int, int]:
        return self.uid, self.gid

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Call from a thread that lives as long as the trial: bwrap dies with the thread that made it."""
        if self._bwrap is not None:
            raise SandboxError("this bwrap sandbox was already started; make a new one per trial")
        problem = bwrap_problem()
        if problem:
            raise SandboxError(problem)
        if self.seconds_left() <= 0:
            raise SandboxError("the deadline has already passed: nothing to start")
        workdir = Path(self.config.workdir).resolve()
        if not workdir.is_dir():
            raise SandboxError(f"workdir {workdir} does not exist: seed it before starting the sandbox")
        layout.prepare_home(workdir)
        identity.hand_over(workdir, self.uid, self.gid)
        self._make_cgroup()
        info_r, info_w = os.pipe()
        ready_r, ready_w = os.pipe()
        self._stderr = tempfile.TemporaryFile()
        argv = [shutil.which("bwrap"), *self.bwrap_args(workdir), "--info-fd", str(info_w), "--",
                *drop_privileges(self.uid, self.gid),
                sys.executable, "-I", "-S", "-c", REAPER, repr(self.config.deadline), str(ready_w)]
        try:
            self._bwrap = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=self._stderr, pass_fds=(info_w, ready_w), env={"PATH": os.defpath},
                                           preexec_fn=self._join_cgroup)
        finally:
            os.close(info_w)
            os.close(ready_w)
        try:
            info = json.loads(read_until(info_r, lambda b: _complete_json(b), START_TIMEOUT_S) or b"{}")
            ready = read_until(ready_r, lambda b: b == b"ready", START_TIMEOUT_S)
        finally:
            os.close(info_r)
            os.close(ready_r)
        if "child-pid" not in info or ready != b"ready":
            self._kill_all()
            raise SandboxError(f"bwrap did not start: {self._bwrap_stderr() or 'no message'}")
        self._init_pid = int(info["child-pid"])
        self._once.arm(self.config.deadline, self.stop)
        self.connect_gateway()

    def stop(self) -> None:
        if self._once.claim():
            self._kill_all()

    def _make_cgroup(self) -> None:
        """Memory and process limits: a cgroup that the sandbox's PID 1 and every process entering it join."""
        wanted = {"memory_gb": self.config.memory_gb, "pids": self.config.pids_limit, "cpus": self.config.cpus}
        self.limits = {**wanted, "tmpfs_gb": self._tmpfs_gb(), "enforced": False}
        if not any(wanted.values()):
            return
        cgroup = Cgroup(self.config.memory_gb, self.config.pids_limit, self.config.cpus)
        try:
            cgroup.create()
        except LimitError as exc:
            self.limits["not_enforced_because"] = str(exc)
            return
        self._cgroup = cgroup
        self.limits.update(enforced=True, cgroup=cgroup.version, cpu_quota=cgroup.cpu_quota())

    def _join_cgroup(self) -> None:
        """preexec_fn of bwrap and of every nsenter: into the cgroup; run by root, under the no-userns filter."""
        if self._cgroup is not None:
            self._cgroup.join()
        if os.getuid() == 0:
            no_userns.install()

    def _kill_all(self) -> None:
        # PID 1 of the namespace first: the kernel then kills every process inside it.
        if self._init_pid is not None:
            kill_pid(self._init_pid)
        if self._bwrap is not None:
            if self._bwrap.poll() is None:
                self._bwrap.kill()
            self._bwrap.wait()
        if self._init_pid is not None and not wait_gone(self._init_pid):
            raise SandboxError(f"the sandbox's PID 1 ({self._init_pid}) survived SIGKILL")
        for proc in self._procs:  # the nsenter launchers outside; their children are gone already
            proc.kill()
            proc.wait()
        self._procs.clear()
        if self._cgroup is not None:  # everything in it is dead now
            self.limits["events"] = self._cgroup.events()
            self._cgroup.remove()
            self._cgroup = None

    # -- running things inside ------------------------------------------------------------------
    def exec(self, command, *, timeout=None, env=None, cwd=None) -> ExecResult:
        argv, timeout = self.exec_plan(command, timeout)
        if timeout <= 0:
            return ExecResult(-9, "", "the deadline has passed", True, 0.0)
        start = time.time()
        proc = self._popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, errors="replace")
        out, err, timed_out = communicate_or_kill(proc, timeout)
        # The deadline timer may kill it a moment before our own timeout fires: still a timeout.
        timed_out = timed_out or (proc.returncode != 0 and self.seconds_left() <= 0.5)
        return ExecResult(-9 if timed_out else proc.returncode, out, err, timed_out, time.time() - start)

    def spawn(self, argv, *, stdout, stderr, env=None, cwd=None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        return self._popen(list(argv), env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr)

    def _popen(self, argv: list[str], *, env, cwd, **popen_kwargs) -> subprocess.Popen:
        if self._init_pid is None or self._once.stopped:
            raise SandboxError("the bwrap sandbox is not running (not started, stopped, or past its deadline)")
        inside_cwd = self._inside_cwd(cwd)
        launcher = [shutil.which("nsenter"), "--target", str(self._init_pid), "--all", "--root", "--wd",
                    *drop_privileges(self.uid, self.gid), "env", "-C", inside_cwd, *argv]
        proc = GroupPopen(launcher, env=self._env(env), start_new_session=True, preexec_fn=self._join_cgroup,
                          **popen_kwargs)
        self._procs = [p for p in self._procs if p.poll() is None] + [proc]
        return proc

    def _inside_cwd(self, cwd: str | None) -> str:
        if not cwd:
            return WORKDIR_INSIDE
        return cwd if os.path.isabs(cwd) else os.path.join(WORKDIR_INSIDE, cwd)

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        visible = ",".join(self.config.gpus) if self.config.gpus else ""
        merged = layout.clean_env(WORKDIR_INSIDE, visible, self.config.env)
        # autoembed.task importable inside from the very checkout whose autoembed/ is mounted, whatever the
        # host's install points at (an editable install of another clone lives in a path hidden here)
        merged.setdefault("PYTHONPATH", str(paths.PACKAGE_DIR.parent))
        if self.config.gpus and os.environ.get("LD_LIBRARY_PATH"):
            # where a GPU host keeps its driver's libcuda outside ld.so's cache (/usr/local/nvidia/lib64)
            merged.setdefault("LD_LIBRARY_PATH", os.environ["LD_LIBRARY_PATH"])
        merged.update(env or {})
        return merged

    # -- the sandbox's filesystem ---------------------------------------------------------------
    def bwrap_args(self, workdir: Path) -> list[str]:
        args = ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv", "--as-pid-1"]
        if os.getuid() == 0:
            # Run by root: no user namespace (one made by root maps the agent to host uid 0; --unshare-all would
            # try one). Root sets up the mounts (it can read what they come from); PID 1 and every command then
            # switch to the sandbox uid.
            args += [*UNSHARE_ALL_BUT_USER, *(arg for cap in SWITCH_USER_CAPS for arg in ("--cap-add", cap))]
        else:
            args.insert(0, "--unshare-all")
            if _supports("--disable-userns"):
                # A user namespace of its own, and no further ones: nothing inside can gain capabilities.
                args += ["--unshare-user", "--disable-userns"]
        for root in layout.SYSTEM_ROOTS:
            if os.path.isdir(root):
                args += ["--ro-bind", root, root]
        for name in layout.MERGED_USR:
            if os.path.islink(name):
                args += ["--symlink", os.readlink(name), name]
            elif os.path.isdir(name):
                args += ["--ro-bind", name, name]
        # The private /tmp and /run come before the runtime paths: a checkout or Python that lives under /tmp
        # (a fresh CI clone) is then mounted on top of the new tmpfs instead of being covered by it.
        args += ["--proc", "/proc", "--dev", "/dev", *self._scratch("/dev/shm"), *self._gpu_args(),
                 "--ro-bind", "/sys", "/sys", *self._scratch("/tmp"), *self._scratch("/run"),
                 "--dir", "/var", *self._scratch("/var/tmp"), "--symlink", "../run", "/var/run"]
        args += self._mount_plan()
        args += ["--bind", str(workdir), WORKDIR_INSIDE]
        if self.config.gateway_socket:  # the gateway's socket: the only thing outside this network namespace it reaches
            args += ["--ro-bind", str(Path(self.config.gateway_socket).parent.resolve()), GATEWAY_DIR_INSIDE]
        for path in self._hiding_tmpfs():  # read-only too, once everything is mounted
            args += ["--remount-ro", str(path)]
        # PID 1 starts in /: bwrap, root without DAC_OVERRIDE by then, may not enter the sandbox uid's 0700 workdir
        args += ["--remount-ro", "/", "--chdir", "/"]
        return args

    def _tmpfs_gb(self) -> dict:
        return self.config.tmpfs_gb or {}

    def _scratch(self, path: str) -> list[str]:
        """A private tmpfs, of its size limit where one is set; writable by the sandbox uid (sticky, like /tmp),
        but for /run."""
        size = self._tmpfs_gb().get(path)
        sized = ["--size", str(max(1 << 20, int(size * GIB)))] if size else []
        return ["--perms", "0755" if path == "/run" else "1777", *sized, "--tmpfs", path]

    def visible_trees(self) -> list[Path]:
        return [*(Path(r) for r in layout.SYSTEM_ROOTS), *self._runtime_binds()]

    def _runtime_binds(self) -> list[Path]:
        # The autoembed package itself (an editable install points at the repo): `autoembed.task`
        # imports inside, `autoembed.sealed` is an empty tmpfs.
        binds = layout.runtime_paths(self.config.readonly_extra) + [paths.PACKAGE_DIR]
        return [p for p in dict.fromkeys(binds) if p.exists()]

    def _hidden_in_view(self) -> list[Path]:
        """Hidden paths that lie inside a visible tree, so need covering."""
        trees = self.visible_trees()
        return [p for p in hidden_paths(self.config.hidden) if p.exists() and any(is_within(p, t) for t in trees)]

    def _hiding_tmpfs(self) -> list[Path]:
        return [p for p in self._hidden_in_view() if p.is_dir()]

    def _mount_plan(self) -> list[str]:
        """Runtime binds and hiding mounts, parents before children, so a hidden folder inside a
        visible one is covered and a runtime folder inside a hidden one (Python under the home)
        is shown again."""
        plan = [(len(p.parts), 0, "bind", p) for p in self._runtime_binds()]
        plan += [(len(p.parts), 1, "hide", p) for p in self._hidden_in_view()]
        plan += [(len(p.parts), 2, "dir", p) for p in self._folders_on_the_way()]
        args: list[str] = []
        for _, _, action, path in sorted(plan):
            if action == "dir":
                args += ["--perms", "0755", "--dir", str(path)]
            elif action == "bind":
                args += ["--ro-bind", str(path), str(path)]
            elif path.is_dir():
                args += ["--tmpfs", str(path)]
            else:
                args += ["--ro-bind", "/dev/null", str(path)]
        return args

    def _folders_on_the_way(self) -> list[Path]:
        """The folders above each runtime bind that bwrap would otherwise make mode 0700 as root: 0755 instead,
        so the sandbox uid can reach what is bound below them (the host's own modes there stay the host's)."""
        trees = [*self.visible_trees()]
        scratch = {Path(p) for p in ("/", "/tmp", "/run", "/var", "/var/tmp", "/dev", "/dev/shm")}
        found = []
        for bind in self._runtime_binds():
            for parent in bind.parents:
                if parent not in scratch and not any(is_within(parent, t) for t in trees):
                    found.append(parent)
        return list(dict.fromkeys(found))

    def _gpu_args(self) -> list[str]:
        """Only the NVIDIA device nodes, never all of /dev: a bound /dev holds the raw disks, which
        root inside could read past every hiding mount."""
        if not self.config.gpus:
            return []
        args: list[str] = []
        for node in sorted(glob.glob("/dev/nvidia*")):
            args += ["--dev-bind", node, node]
        return args

    def describe(self) -> dict:
        return {**super().describe(), "workdir_inside": WORKDIR_INSIDE, "bwrap": _bwrap_version(),
                "visible": [str(p) for p in self.visible_trees()],
                "hidden": [str(p) for p in hidden_paths(self.config.hidden)], "limits": self.limits}

    def _bwrap_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()


def bwrap_problem() -> str | None:
    """Why bwrap cannot sandbox here, or None if a probe sandbox runs."""
    for tool in ("bwrap", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            package = "bubblewrap" if tool == "bwrap" else "util-linux"
            return f"{tool} is not installed: apt-get install -y {package}"
    probe = ["bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/", "true"]
    if _supports("--disable-userns"):
        probe[1:1] = ["--unshare-user", "--disable-userns"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "a probe bwrap sandbox did not finish in 20 s"
    if done.returncode != 0:
        return (f"bwrap cannot create namespaces here ({done.stderr.strip() or done.returncode}); "
                "unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1)")
    return None


@functools.cache
def _bwrap_help() -> str:
    done = subprocess.run(["bwrap", "--help"], capture_output=True, text=True)
    return done.stdout + done.stderr


def _supports(flag: str) -> bool:
    return flag in _bwrap_help()


@functools.cache
def _bwrap_version() -> str:
    done = subprocess.run(["bwrap", "--version"], capture_output=True, text=True)
    return done.stdout.strip()


def _complete_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False
