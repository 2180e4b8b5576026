"""Limits that fit the machine: what task.toml asks for, clamped to this host's memory, cores and free disk.

The host keeps headroom for itself (its own processes, the scorer, the page cache), and what is left is shared
by the trials that run side by side (`concurrent`: one per GPU slot when a loop or a grid places several here).
Each fitted value is recorded with what was asked and why it changed, so a trial's record says what it ran under.
The tmpfs mounts inside (/tmp, /var/tmp, /dev/shm, /run) get sizes that together stay under the memory limit.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

GIB = 1024**3
MEMORY_HEADROOM = (2.0, 0.10)  # GiB, fraction of MemTotal: the larger is kept for the host
CPU_HEADROOM = (0.5, 0.0625)  # cores, fraction of the cores
DISK_HEADROOM = (2.0, 0.05)  # GiB, fraction of the filesystem
TMPFS_SHARES = {"/tmp": 0.25, "/dev/shm": 0.25, "/var/tmp": 0.125, "/run": 0.03125}  # of the memory limit; sum < 1


def mem_total_gb(meminfo: Path = Path("/proc/meminfo")) -> float:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError(f"{meminfo} has no MemTotal line")


def host_cpus() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:
        return float(os.cpu_count() or 1)


def _share(total: float, headroom: tuple[float, float], concurrent: int) -> float:
    return max(0.0, total - max(headroom[0], headroom[1] * total)) / max(1, concurrent)


def fit_memory(requested_gb: float | None, concurrent: int = 1, total_gb: float | None = None) -> dict:
    total = mem_total_gb() if total_gb is None else total_gb
    share = round(max(0.25, _share(total, MEMORY_HEADROOM, concurrent)), 2)
    return _fitted(requested_gb, share, "GiB", f"MemTotal {total:.1f} GiB less the host's headroom, "
                                               f"shared by {concurrent} trial(s) side by side")


def fit_cpus(requested: float | None, concurrent: int = 1, total: float | None = None) -> dict:
    total = host_cpus() if total is None else total
    share = round(max(0.5, _share(total, CPU_HEADROOM, concurrent)), 2)
    return _fitted(requested, share, "cores", f"{total:g} cores less the host's headroom, "
                                              f"shared by {concurrent} trial(s) side by side")


def fit_disk(requested_gb: float, folder: Path, concurrent: int = 1) -> dict:
    """The workdir's size against the free space where its (sparse) image lies."""
    st = os.statvfs(folder)
    free, size = st.f_bavail * st.f_frsize / GIB, st.f_blocks * st.f_frsize / GIB
    share = round(max(0.1, max(0.0, free - max(DISK_HEADROOM[0], DISK_HEADROOM[1] * size)) / max(1, concurrent)), 2)
    return _fitted(requested_gb, share, "GiB", f"{free:.1f} GiB free at {folder} less the host's headroom, "
                                               f"shared by {concurrent} trial(s) side by side")


def tmpfs_sizes(memory_gb: float) -> dict[str, float]:
    """Sizes (GiB) of the scratch mounts inside, together under the memory limit (their pages count in it)."""
    return {path: round(memory_gb * share, 3) for path, share in TMPFS_SHARES.items()}


def with_host_defaults(config):
    """A SandboxConfig whose unset memory, CPU and scratch limits are this host's share for one trial: a sandbox
    made without task.toml (a loop's smoke check, a notebook) is bounded too. Set values are kept as given."""
    memory = config.memory_gb or fit_memory(None)["used"]
    return dataclasses.replace(config, memory_gb=memory, cpus=config.cpus or fit_cpus(None)["used"],
                               tmpfs_gb=config.tmpfs_gb or tmpfs_sizes(memory))


def _fitted(requested: float | None, share: float, unit: str, basis: str) -> dict:
    if requested is None:
        return {"requested": None, "used": share, "reason": f"task.toml sets none: the host's share ({basis})"}
    if requested <= share:
        return {"requested": requested, "used": requested, "reason": f"fits ({share:g} {unit} available: {basis})"}
    return {"requested": requested, "used": share, "reason": f"clamped: {requested:g} {unit} asked, {basis} "
                                                            f"leaves {share:g} {unit}"}
