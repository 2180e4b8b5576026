"""Resource limits for a trial, the same for every engine: memory, processes and the workdir's size.

- Memory and process count: a cgroup holding everything the sandbox runs. Docker makes its own (mem_limit,
  pids_limit); for bwrap, Cgroup makes one directly in the cgroup filesystem (v2, or the v1 memory and pids
  hierarchies) and every process that enters the sandbox joins it before it execs.
- Disk: the workdir is an ext4 filesystem image of a fixed size, loop-mounted at the workdir's path for the
  trial (both engines bind that path), so `fallocate -l 50G` fails inside instead of filling the host.

What was enforced, and whether a limit was hit (OOM kills, refused forks, a full workdir), goes into meta.json.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from autoembed.sandbox import host_fit, workdir_guard

CGROUP_ROOT = Path("/sys/fs/cgroup")
GIB = 1024**3
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    memory_gb: float | None = None
    pids: int | None = None
    disk_gb: float | None = None  # clamped to the free disk when the workdir is made (host_fit.fit_disk)
    cpus: float | None = None  # a CPU quota, in cores
    tmpfs_gb: dict | None = None  # the size of each scratch mount inside (/tmp, /var/tmp, /dev/shm, /run)
    fit: dict = field(default_factory=dict)  # per limit: requested, used, and why

    @classmethod
    def from_spec(cls, spec, *, concurrent: int = 1, disk_folder: Path | None = None) -> "Limits":
        """task.toml's [limits], fitted to this machine for `concurrent` trials side by side (host_fit); the
        workdir's size against the free disk at disk_folder (where its image will lie), when given."""
        memory = host_fit.fit_memory(spec.memory_gb, concurrent)
        cpus = host_fit.fit_cpus(spec.cpus, concurrent)
        fit = {"memory_gb": memory, "cpus": cpus, "concurrent": concurrent}
        disk = spec.disk_gb
        if disk and disk_folder is not None:
            fit["disk_gb"] = host_fit.fit_disk(disk, disk_folder, concurrent)
            disk = fit["disk_gb"]["used"]
        return cls(memory["used"], spec.pids, disk, cpus["used"], host_fit.tmpfs_sizes(memory["used"]), fit)


class LimitError(RuntimeError):
    pass


# -- memory and processes -------------------------------------------------------------------------
class Cgroup:
    """A cgroup of its own for one sandbox, made where this machine allows: cgroup v2 (the unified hierarchy
    with the memory and pids controllers) or the v1 memory and pids hierarchies."""

    def __init__(self, memory_gb: float | None, pids: int | None, cpus: float | None = None):
        self.memory_gb, self.pids, self.cpus = memory_gb, pids, cpus
        self.name = f"autoembed-{uuid.uuid4().hex[:12]}"
        self.dirs: list[Path] = []
        self.version: str | None = None

    def create(self) -> None:
        """Make the cgroup and set its limits; LimitError (with the reason) where this machine does not allow it."""
        try:
            if (CGROUP_ROOT / "cgroup.controllers").is_file():
                self._create_v2()
            else:
                self._create_v1()
        except OSError as exc:
            self.remove()
            raise LimitError(f"cannot make a cgroup here ({exc}); run as root, or use --sandbox docker") from None

    def _create_v2(self) -> None:
        wanted = {"memory", "pids", "cpu"} if self.cpus else {"memory", "pids"}
        if not wanted <= set((CGROUP_ROOT / "cgroup.controllers").read_text().split()):
            raise OSError(f"the cgroup v2 root lacks the {sorted(wanted)} controllers")
        enabled = set((CGROUP_ROOT / "cgroup.subtree_control").read_text().split())
        if not wanted <= enabled:
            (CGROUP_ROOT / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        group = CGROUP_ROOT / self.name
        group.mkdir()
        self.dirs, self.version = [group], "v2"
        if self.memory_gb:
            (group / "memory.max").write_text(str(int(self.memory_gb * GIB)))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        if self.pids:
            (group / "pids.max").write_text(str(self.pids))
        if self.cpus:
            (group / "cpu.max").write_text(f"{int(self.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")

    def _create_v1(self) -> None:
        memory, pids = CGROUP_ROOT / "memory" / self.name, CGROUP_ROOT / "pids" / self.name
        memory.mkdir()
        self.dirs, self.version = [memory], "v1"
        pids.mkdir()
        self.dirs.append(pids)
        if self.memory_gb:
            (memory / "memory.limit_in_bytes").write_text(str(int(self.memory_gb * GIB)))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                (memory / "memory.memsw.limit_in_bytes").write_text(str(int(self.memory_gb * GIB)))
        if self.pids:
            (pids / "pids.max").write_text(str(self.pids))
        if self.cpus:
            cpu = CGROUP_ROOT / "cpu" / self.name
            cpu.mkdir()
            self.dirs.append(cpu)
            (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(int(self.cpus * CPU_PERIOD_US)))

    def cpu_quota(self) -> str | None:
        """The quota as the kernel holds it ("<quota> <period>" in microseconds), read back."""
        for folder in self.dirs:
            if (folder / "cpu.max").is_file():
                return (folder / "cpu.max").read_text().strip()
            if (folder / "cpu.cfs_quota_us").is_file():
                quota, period = (folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text()
                return f"{quota.strip()} {period.strip()}"
        return None

    def join(self) -> None:
        """Move the calling process into the cgroup (a Popen preexec_fn: the child joins before it execs)."""
        for folder in self.dirs:
            with open(folder / "cgroup.procs", "w") as fh:
                fh.write("0")

    def events(self) -> dict[str, int]:
        return cgroup_events(self.dirs)

    def remove(self, wait_s: float = 5.0) -> None:
        """Remove the cgroup; call once every process in it is killed (the kernel may take a moment to empty it)."""
        end = time.time() + wait_s
        for folder in reversed(self.dirs):
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.time() > end:
                        break
                    time.sleep(0.05)
        self.dirs = []


def cgroup_events(dirs: list[Path]) -> dict[str, int]:
    """{"oom_kills": n, "pids_refused": n} from a cgroup's event counters (v1 or v2); missing counters read 0."""
    out = {"oom_kills": 0, "pids_refused": 0}
    for folder in dirs:
        for name, key, counter in (("memory.events", "oom_kills", "oom_kill"), ("memory.oom_control", "oom_kills", "oom_kill"),
                                 ("pids.events", "pids_refused", "max")):
            try:
                lines = (folder / name).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if len(parts) == 2 and parts[0] == counter:
                    out[key] = max(out[key], int(parts[1]))
    return out


def cgroup_dirs_of(pid: int) -> list[Path]:
    """The memory and pids cgroup folders a process is in (v2: one folder; v1: one per hierarchy)."""
    dirs = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            dirs.append(CGROUP_ROOT / path.lstrip("/"))
        for controller in ("memory", "pids"):
            if controller in controllers.split(","):
                dirs.append(CGROUP_ROOT / controller / path.lstrip("/"))
    return [d for d in dirs if d.is_dir()]


# -- disk -----------------------------------------------------------------------------------------
class WorkdirVolume:
    """A fixed-size ext4 image loop-mounted at the workdir's path for the trial. The image is sparse: it takes
    only what the agent writes. A guard process (workdir_guard) does the release, when asked or when this process
    dies without asking: the content goes back to a plain folder at the same path, the image is deleted."""

    def __init__(self, workdir: Path, size_gb: float):
        self.workdir = Path(workdir)
        self.size_gb = size_gb
        self.image = self.workdir.with_name(self.workdir.name + ".img")
        self.mounted = False

    def create(self) -> None:
        if os.geteuid() != 0:
            raise LimitError("a fixed-size workdir needs root (a loop-mounted filesystem image)")
        for tool in ("mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                raise LimitError(f"{tool} is missing: apt-get install -y e2fsprogs mount")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as fh:
            fh.truncate(int(self.size_gb * GIB))
        # no reserved blocks, no journal: a scratch filesystem for one trial; lazy init keeps mkfs to a second
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,lazy_journal_init=1",
              str(self.image)])
        try:
            _run(["mount", "-o", "loop,nosuid,nodev", str(self.image), str(self.workdir)])
        except LimitError:
            self.image.unlink(missing_ok=True)
            raise
        self.mounted = True
        (self.workdir / "lost+found").rmdir()
        # in a session of its own, so a SIGKILL of the trial's process group leaves it to release the workdir
        guard = Path(__file__).with_name("workdir_guard.py")  # standard library only: run as a script
        self._guard = subprocess.Popen([sys.executable, str(guard), str(self.workdir), str(self.image)],
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, cwd="/")

    def usage(self) -> dict:
        st = os.statvfs(self.workdir)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        return {"used_gb": round((total - free) / GIB, 3), "size_gb": round(total / GIB, 3),
                "full": free < max(64 * 2**20, 0.002 * total)}

    def release(self) -> None:
        """Asks the guard to release the workdir and waits for it: one code path whether or not the owner lives."""
        if not self.mounted:
            return
        self.mounted = False
        try:
            self._guard.communicate(b"release\n", timeout=900)
        except subprocess.TimeoutExpired:
            raise LimitError(f"the workdir guard of {self.workdir} did not finish in 15 min") from None
        if self._guard.returncode != 0:  # the guard died or failed: one more try from here
            try:
                workdir_guard.release(self.workdir, self.image)
            except (workdir_guard.ReleaseError, OSError) as exc:
                raise LimitError(f"the workdir guard of {self.workdir} failed (exit {self._guard.returncode}), "
                                 f"and so did releasing it from here: {exc}") from None


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise LimitError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-300:]}")
