"""Rows of the escape case judged on the host after the trial: what the agent left in its workdir must not act on
the host (no set-uid/set-gid bit, FIFO, socket or device node, nothing owned by root), and the trial ran under
limits fitted to this machine, in run folders other users cannot write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from autoembed.integrity.outcome import ATTACK, ERROR, Row
from autoembed.sandbox.host_fit import mem_total_gb
from autoembed.sandbox.limits import GIB


def left_behind_row(name: str, report: dict, meta: dict, workdir: Path, seconds: float) -> Row:
    made = report.get("left_behind") or ""
    folder = workdir / "left_behind"
    shell = next((line.split()[0] for line in made.splitlines() if line.endswith(" suid_bash")), "")
    if not (shell.startswith("-rws") and shell[6:7] == "s") or "a_fifo" not in made:
        return Row(name, ATTACK, ERROR, f"the set-uid shell and FIFO were not made inside: {made[-300:]!r}", seconds)
    problems = []
    for entry in sorted(folder.rglob("*")) if folder.is_dir() else []:
        st = entry.lstat()
        kind = stat.S_IFMT(st.st_mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            problems.append(f"{entry.name} is still a special file ({oct(kind)})")
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            problems.append(f"{entry.name} keeps mode {oct(stat.S_IMODE(st.st_mode))}")
        if st.st_uid == 0:
            problems.append(f"{entry.name} is owned by host root")
    if not (folder / "suid_bash").is_file():
        return Row(name, ATTACK, ERROR, f"the workdir's copy of the shell is missing: {sorted(os.listdir(workdir))}",
                   seconds)
    cleaned = meta.get("workdir_cleaned") or {}
    if problems:
        return Row(name, ATTACK, "not stopped", "; ".join(problems), seconds, {"cleaned": cleaned})
    owner = (folder / "suid_bash").lstat().st_uid
    dropped = ", ".join(f"{d['path']} [{d['kind']}]" for d in cleaned.get("dropped", []))
    return Row(name, ATTACK, "blocked", f"inside: suid_bash made {shell}, mknod refused; on the host "
                                        f"suid_bash is uid {owner}'s with its s-bits cleared, and meta.json says "
                                        f"removed: {dropped or 'nothing'}", seconds, {"cleaned": cleaned})


def host_limits_row(name: str, report: dict, meta: dict, run_dir: Path, seconds: float) -> Row:
    limits = meta.get("limits") or {}
    fit = limits.get("fit") or {}
    problems = []
    total = mem_total_gb()
    memory = limits.get("memory_gb")
    if not memory or memory >= total:
        problems.append(f"memory limit {memory} GiB is not under MemTotal {total:.1f} GiB")
    if not limits.get("cpus"):
        problems.append("no CPU quota was set")
    if not {"memory_gb", "cpus"} <= set(fit):
        problems.append(f"meta.json does not say what was asked and why it changed: {sorted(fit)}")
    scratch = report.get("scratch_bytes") or {}
    tmpfs = limits.get("tmpfs_gb") or {}
    for mount, size in scratch.items():
        allowed = tmpfs.get(mount)
        if allowed is None or size > allowed * GIB + (1 << 20):
            problems.append(f"{mount} holds {size >> 20} MiB inside, above its fitted {allowed} GiB")
    if memory and sum(scratch.values()) >= memory * GIB:
        problems.append(f"the scratch mounts hold {sum(scratch.values()) / GIB:.1f} GiB, not under the memory limit")
    for folder in (run_dir, run_dir / "workdir"):
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o022:
            problems.append(f"{folder} is writable by other users (mode {oct(mode)})")
    if stat.S_IMODE(run_dir.stat().st_mode) & 0o077:
        problems.append(f"the run folder {run_dir} is open to other users (mode {oct(run_dir.stat().st_mode)})")
    evidence = {"limits": {k: limits.get(k) for k in ("memory_gb", "cpus", "disk_gb", "tmpfs_gb", "fit")},
                "scratch_bytes_inside": scratch}
    if problems:
        return Row(name, ATTACK, "not stopped", "; ".join(problems), seconds, evidence)
    return Row(name, ATTACK, "blocked", f"memory {memory} GiB ({fit['memory_gb']['reason']}); CPU quota "
                                        f"{limits['cpus']} cores; /tmp {scratch.get('/tmp', 0) >> 20} MiB inside; "
                                        f"run folder mode {oct(stat.S_IMODE(run_dir.stat().st_mode))}", seconds,
               evidence)
