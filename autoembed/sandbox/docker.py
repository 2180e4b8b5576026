"""Docker, through the `docker` Python SDK: one container per trial, killed and removed at the deadline.

The image (image.py) is a minimal Debian with what a trial needs and none of the hidden paths, so
nothing hidden is there to find; the container adds only the workdir (writable, at /workdir), a read-only root,
private tmpfs for /tmp and /run (sized), no capabilities, no-new-privileges, memory, CPU and pid limits, the
unprivileged sandbox uid (never root: identity.py), and no
network: only loopback, where a forwarder serves the LLM gateway's socket (mounted at /gateway).
PID 1 is the same reaper as in bwrap: it exits at the deadline, so the container dies on time even if the harness itself is gone.

exec() goes through the SDK. spawn() must hand back a real subprocess.Popen (the CLI agents read
its stdout line by line and wait on it), which the SDK cannot give, so it runs `docker exec -i`
through subprocess; signalling that Popen also signals the processes it started inside.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

from autoembed.sandbox import identity, layout
from autoembed.sandbox.base import GATEWAY_DIR_INSIDE, ExecResult, Sandbox, SandboxError
from autoembed.sandbox.deadline import StopOnce
from autoembed.sandbox.hidden import default_hidden
from autoembed.sandbox.image import docker_client
from autoembed.sandbox.limits import GIB, cgroup_dirs_of, cgroup_events
from autoembed.sandbox.procs import REAPER, pids_where
from autoembed.sandbox.rootfs import IMAGE_PYTHON

WORKDIR_INSIDE = "/workdir"
SPAWN_MARKER = "AUTOEMBED_SPAWN"
SHM_SIZE = "2g"  # without a fitted size: torch DataLoader workers share tensors through /dev/shm (Docker: 64 MB)
KILL_GRACE_S = 5.0


class DockerSandbox(Sandbox):
    kind = "docker"

    def __init__(self, config, client=None):
        super().__init__(config)
        self._client = client
        self._stream_client = None  # no read timeout: a command may print nothing for an hour
        self._container = None
        self._procs: list[subprocess.Popen] = []
        self._once = StopOnce()  # stop() or the deadline, whichever comes first, removes it once
        self._gpu_mode = "none"
        self._limit_events: dict | None = None
        self.uid, self.gid = identity.sandbox_ids()

    @property
    def workdir_inside(self) -> str:
        return WORKDIR_INSIDE

    @property
    def python(self) -> str:
        return IMAGE_PYTHON

    @property
    def user(self) -> str:
        # Never root: the dedicated sandbox uid when run as root, else the host user's own ids (identity.py)
        return f"{self.uid}:{self.gid}"

    def ids(self) -> tuple[int, int]:
        return self.uid, self.gid

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._container is not None:
            raise SandboxError("this docker sandbox was already started; make a new one per trial")
        if not self.config.image:
            raise SandboxError("no image: build one with `python -m autoembed.sandbox.image` and set "
                               "SandboxConfig.image, or use make_sandbox('docker', config)")
        if self.seconds_left() <= 0:
            raise SandboxError("the deadline has already passed: nothing to start")
        workdir = Path(self.config.workdir).resolve()
        if not workdir.is_dir():
            raise SandboxError(f"workdir {workdir} does not exist: seed it before starting the sandbox")
        import docker

        self._client = self._client or docker_client()
        self._stream_client = docker_client(timeout=None)
        layout.prepare_home(workdir, self.python)
        identity.hand_over(workdir, self.uid, self.gid)
        try:
            self._container = self._client.containers.run(**self.container_kwargs(workdir))
        except docker.errors.DockerException as exc:
            raise SandboxError(f"docker could not start a container from {self.config.image}: {exc}") from exc
        self._once.arm(self.config.deadline, self.stop)
        self.connect_gateway()

    def container_kwargs(self, workdir: Path) -> dict:
        import docker

        volumes = {str(workdir): {"bind": WORKDIR_INSIDE, "mode": "rw"}}
        for path in map(Path, self.config.readonly_extra):  # what an agent asked for beyond the image
            if path.exists():
                volumes[str(path.resolve())] = {"bind": str(path.resolve()), "mode": "ro"}
        if self.config.gateway_socket:
            volumes[str(Path(self.config.gateway_socket).parent.resolve())] = {"bind": GATEWAY_DIR_INSIDE, "mode": "ro"}
        sizes = {path: f",size={max(1 << 20, int(gb * GIB))}" for path, gb in (self.config.tmpfs_gb or {}).items()}
        tmpfs = {"/tmp": "rw,exec,mode=1777" + sizes.get("/tmp", ""),
                 "/var/tmp": "rw,exec,mode=1777" + sizes.get("/var/tmp", ""),
                 "/run": "rw,mode=755" + sizes.get("/run", "")}
        # The image's /root is 0700, and a --tmpfs there takes that mode: folders bound below it (a harness's
        # staging copy) would be out of the sandbox uid's reach. An empty tmpfs volume of mode 0755 instead.
        empty_root = docker.types.DriverConfig("local", {"type": "tmpfs", "device": "tmpfs",
                                                         "o": "mode=0755,size=1m,nosuid,nodev"})
        mounts = [docker.types.Mount("/root", None, type="volume", no_copy=True, driver_config=empty_root)]
        for path in self._extra_hidden():  # the defaults are not in the image at all
            if path.is_dir():
                tmpfs[str(path)] = "ro,mode=755"
            elif path.exists():
                mounts.append(docker.types.Mount(str(path), "/dev/null", type="bind", read_only=True))
        kwargs = dict(
            image=self.config.image,
            command=[self.python, "-I", "-S", "-c", REAPER, repr(self.config.deadline)],
            name=f"autoembed-{uuid.uuid4().hex[:12]}",
            labels={"autoembed.sandbox": "1"},
            detach=True,
            auto_remove=True,
            user=self.user,
            working_dir=WORKDIR_INSIDE,
            environment=self._base_env(),
            volumes=volumes,
            mounts=mounts,
            read_only=True,
            tmpfs=tmpfs,
            shm_size=self._shm_size(),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            # no interface but loopback, always: the LLM gateway's socket (mounted at /gateway) is the way out
            network_mode="none",
            pids_limit=self.config.pids_limit,
        )
        if self.config.memory_gb:
            kwargs["mem_limit"] = f"{int(self.config.memory_gb * 1024)}m"
            kwargs["memswap_limit"] = kwargs["mem_limit"]
        if self.config.cpus:
            kwargs["nano_cpus"] = int(self.config.cpus * 1e9)
        gpu = self._gpu_kwargs()
        kwargs["mounts"] = mounts + gpu.pop("mounts", [])
        kwargs.update(gpu)
        return kwargs

    def _shm_size(self) -> str:
        size = (self.config.tmpfs_gb or {}).get("/dev/shm")
        return str(max(1 << 20, int(size * GIB))) if size else SHM_SIZE

    def stop(self) -> None:
        if not self._once.claim():
            return
        if self._container is not None:
            self._limit_events = self._read_limit_events()
            _remove_container(self._client, self._container.id)
        for proc in self._procs:  # the `docker exec` clients end with their container
            try:
                proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                subprocess.Popen.kill(proc)
                proc.wait()
        self._procs.clear()

    # -- running things inside ------------------------------------------------------------------
    def exec(self, command, *, timeout=None, env=None, cwd=None) -> ExecResult:
        argv, timeout = self.exec_plan(command, timeout)
        if timeout <= 0:
            return ExecResult(-9, "", "the deadline has passed", True, 0.0)
        self._require_running()
        api = self._stream_client.api
        # `timeout` makes its own process group and kills all of it, like killpg in the other sandboxes.
        wrapped = ["timeout", "--signal=KILL", f"{timeout:.3f}", *argv]
        start = time.time()
        exec_id = api.exec_create(self._container.id, wrapped, environment=env or {}, workdir=self._inside_cwd(cwd),
                                  user=self.user)["Id"]
        out: list[bytes] = []
        err: list[bytes] = []

        def read() -> None:
            try:
                for chunk_out, chunk_err in api.exec_start(exec_id, stream=True, demux=True):
                    out.append(chunk_out or b"")
                    err.append(chunk_err or b"")
            except Exception as exc:  # the container went away mid-stream (deadline, stop)
                err.append(f"\n[stream ended: {exc}]".encode())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout + KILL_GRACE_S)
        info = self._exec_info(exec_id)
        if reader.is_alive() and info.get("Pid"):  # a background child holds the pipes: kill the group
            _killpg(info["Pid"])
            reader.join(KILL_GRACE_S)
            info = self._exec_info(exec_id)
        code = info.get("ExitCode")
        elapsed = time.time() - start
        # 137: `timeout` killed it; past the deadline: the container went away under it.
        timed_out = (code in (None, 137, -9) and elapsed >= timeout - 0.05) or (code != 0 and self.seconds_left() <= 0.5)
        decode = lambda parts: b"".join(parts).decode("utf-8", "replace")  # noqa: E731
        return ExecResult(-9 if timed_out or code is None else code, decode(out), decode(err), timed_out, elapsed)

    def spawn(self, argv, *, stdout, stderr, env=None, cwd=None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        self._require_running()
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise SandboxError("spawn needs the docker command line client: apt-get install -y docker.io")
        marker = uuid.uuid4().hex
        extra = {**(env or {}), SPAWN_MARKER: marker}
        names = [arg for key in extra for arg in ("-e", key)]  # values travel in the client's env, not argv
        command = [docker_cli, "exec", "-i", "--user", self.user, "--workdir", self._inside_cwd(cwd), *names,
                   self._container.id, *argv]
        proc = DockerExecPopen(command, env={**os.environ, **extra}, stdin=stdin, stdout=stdout, stderr=stderr,
                               start_new_session=True)
        proc.marker = marker
        self._procs = [p for p in self._procs if p.poll() is None] + [proc]
        return proc

    def _read_limit_events(self) -> dict | None:
        """OOM kills and refused forks, from the container's cgroup (read before the container goes)."""
        try:
            pid = self._client.api.inspect_container(self._container.id)["State"]["Pid"]
            return cgroup_events(cgroup_dirs_of(pid)) if pid else None
        except Exception:  # noqa: BLE001 - the container may already be gone; the record then says None
            return None

    def _require_running(self) -> None:
        if self._container is None or self._once.stopped:
            raise SandboxError("the docker sandbox is not running (not started, stopped, or past its deadline)")

    def _exec_info(self, exec_id: str) -> dict:
        for _ in range(40):
            info = self._stream_client.api.exec_inspect(exec_id)
            if not info.get("Running"):
                return info
            time.sleep(0.05)
        return info

    def _inside_cwd(self, cwd: str | None) -> str:
        if not cwd:
            return WORKDIR_INSIDE
        return cwd if os.path.isabs(cwd) else os.path.join(WORKDIR_INSIDE, cwd)

    def _base_env(self) -> dict[str, str]:
        gpus = self.config.gpus or []
        visible = ",".join(str(i) for i in range(len(gpus))) if self._uses_device_requests() else ",".join(gpus)
        return layout.clean_env(WORKDIR_INSIDE, visible, self.config.env, python=self.python)

    def _extra_hidden(self) -> list[Path]:
        defaults = {str(p) for p in default_hidden()}
        return [Path(os.path.abspath(p)) for p in self.config.hidden if str(os.path.abspath(p)) not in defaults]

    # -- GPUs -----------------------------------------------------------------------------------
    def _uses_device_requests(self) -> bool:
        if not self.config.gpus:
            return False
        hooks = ("nvidia-container-runtime-hook", "nvidia-container-cli", "nvidia-container-runtime")
        return any(shutil.which(h) for h in hooks)

    def _gpu_kwargs(self) -> dict:
        if not self.config.gpus:
            return {}
        import docker

        if self._uses_device_requests():
            self._gpu_mode = "device_requests"
            return {"device_requests": [docker.types.DeviceRequest(device_ids=list(self.config.gpus),
                                                                   capabilities=[["gpu"]])]}
        # No NVIDIA container toolkit: the image has the host's CUDA torch (rootfs.py copies this
        # machine's install) but not the driver, which must match the kernel's: its user-space
        # libraries are bound read-only at their host paths, and all GPUs' device nodes passed;
        # CUDA_VISIBLE_DEVICES selects (as in bwrap).
        self._gpu_mode = "device nodes"
        nodes = [n for n in sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/nvidia-caps/*"))
                 if stat.S_ISCHR(os.stat(n).st_mode)]
        mounts = [docker.types.Mount(str(f), str(f), type="bind", read_only=True) for f in driver_files()]
        return {"devices": [f"{n}:{n}:rwm" for n in nodes], "mounts": mounts}

    def describe(self) -> dict:
        info = {**super().describe(), "workdir_inside": WORKDIR_INSIDE, "image": self.config.image,
                "user": self.user, "gpu_mode": self._gpu_mode,
                "limits": {"memory_gb": self.config.memory_gb, "pids": self.config.pids_limit, "cpus": self.config.cpus,
                           "tmpfs_gb": self.config.tmpfs_gb, "enforced": True, "events": self._limit_events}}
        try:
            client = self._client or docker_client()
            info["image_id"] = client.images.get(self.config.image).id
            info["engine"] = client.version().get("Version")
        except Exception as exc:  # describing must never break a trial record
            info["engine_error"] = str(exc)
        return info


DRIVER_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
DRIVER_PATTERNS = ("libcuda.so*", "libnvidia-*.so*", "libcudadebugger.so*", "libnvcuvid.so*")


def driver_files(library_dirs=DRIVER_LIBRARY_DIRS, binaries=("nvidia-smi",)) -> list[Path]:
    """The NVIDIA driver's user-space files on this host (what the container toolkit would inject)."""
    found = [Path(f) for d in library_dirs for pattern in DRIVER_PATTERNS for f in glob.glob(os.path.join(d, pattern))]
    found += [Path(exe) for exe in map(shutil.which, binaries) if exe]
    return sorted(dict.fromkeys(f for f in found if f.is_file()))


class DockerExecPopen(subprocess.Popen):
    """`docker exec` client whose signals also reach what it started inside (found by a marker in
    their environment): killing the client alone leaves the process in the container running."""

    marker = ""

    def send_signal(self, sig: int) -> None:
        inside = self._signal_inside(sig)
        # a catchable signal spares the client, which then reports the command's real exit status
        if sig == signal.SIGKILL or not inside:
            super().send_signal(sig)
        if sig == signal.SIGKILL:
            # one scan of /proc can miss a process (seen once in a full test run: the spawned command outlived
            # kill() by 10 s): scan again until none is left, for up to a second
            for _ in range(10):
                if not self._signal_inside(sig):
                    break
                time.sleep(0.1)

    def _signal_inside(self, sig: int) -> list[int]:
        inside = pids_with_marker(self.marker)
        for pid in inside:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return inside


def pids_with_marker(marker: str) -> list[int]:
    """Host processes started by this sandbox's `docker exec` (their environment holds the marker)."""
    return pids_where(lambda proc: proc.environ().get(SPAWN_MARKER) == marker)


def _killpg(pid: int) -> None:
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_container(client, container_id: str) -> None:
    import docker

    try:
        client.api.remove_container(container_id, force=True, v=True)  # v: its anonymous /root volume too
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            raise
    end = time.time() + 30
    while time.time() < end:  # auto_remove may still be finishing; wait until it is really gone
        try:
            client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return
        time.sleep(0.05)
    raise SandboxError(f"container {container_id[:12]} was not removed within 30 s")
