"""Releases a trial's fixed-size workdir even when the process that mounted it is killed.

WorkdirVolume starts `python workdir_guard.py WORKDIR IMAGE` in a session of its own (a SIGKILL
of the trial's process group leaves it standing) and holds the write end of its stdin. The guard waits for one
line or for end of file: a line is the owner asking for the release; end of file with no line means the owner
died (SIGKILL, OOM, a crash). Either way the guard does the one release: the workdir's content is copied out to a
plain folder (links kept as links), the filesystem unmounted (lazily if a stray process still holds it), the
image deleted, and the plain folder put at the workdir's path, so the run folder reads as it would have. The copy is
made inert first (make_inert): no set-uid or set-gid bit, device node, FIFO or socket of the agent's reaches the host.

Standard library only: it starts in a fraction of a second and imports nothing the trial's Python may break.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path


class ReleaseError(RuntimeError):
    pass


def release(workdir: Path, image: Path) -> None:
    """Idempotent: a release cut short (by a second kill) finishes when run again."""
    workdir, image = Path(workdir), Path(image)
    keep = workdir.with_name(workdir.name + ".out")
    if os.path.ismount(workdir):
        if keep.exists():  # an earlier copy was cut short: copy again, from the mounted content
            _run(["rm", "-rf", str(keep)])
        keep.mkdir()
        _run(["cp", "-a", "--no-dereference", f"{workdir}/.", str(keep)])
        cleaned = make_inert(keep)  # before the copy takes the workdir's place
        if cleaned["dropped"] or cleaned["stripped"]:
            _say(f"released {workdir}: {describe_cleaning(cleaned)}")
        try:
            _run(["umount", str(workdir)])
        except ReleaseError:  # still busy (a stray process of a `none` sandbox): detach it, the copy is out already
            _run(["umount", "--lazy", str(workdir)])
    image.unlink(missing_ok=True)
    if keep.is_dir():
        workdir.rmdir()
        keep.rename(workdir)


SPECIAL_KINDS = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
                 stat.S_IFSOCK: "socket"}


def make_inert(root: Path) -> dict:
    """What the agent left must not act on the host: set-uid and set-gid bits are cleared, device nodes,
    FIFOs and sockets removed. Links are never followed. Call once no process of the agent runs.
    Returns {"stripped": [relative paths], "dropped": [{"path", "kind"}]}."""
    stripped, dropped = [], []
    for folder, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        relative = os.path.relpath(folder, root)
        for name in dirs + files:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            path = os.path.normpath(os.path.join(relative, name))
            kind = SPECIAL_KINDS.get(stat.S_IFMT(st.st_mode))
            if kind:
                os.unlink(name, dir_fd=dir_fd)
                dropped.append({"path": path, "kind": kind})
            elif not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:  # the inode may be a host file's: never chmod it
                    os.unlink(name, dir_fd=dir_fd)
                    dropped.append({"path": path, "kind": "set-uid/set-gid hard link"})
                    continue
                _chmod_nofollow(name, dir_fd, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                stripped.append(path)
    return {"stripped": sorted(stripped), "dropped": sorted(dropped, key=lambda d: d["path"])}


def _chmod_nofollow(name: str, dir_fd: int, mode: int) -> None:
    # os.chmod(follow_symlinks=False) is not implemented on Linux: chmod the O_PATH descriptor through /proc
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def describe_cleaning(cleaned: dict, shown: int = 5) -> str:
    parts = []
    if cleaned["stripped"]:
        parts.append(f"set-uid/set-gid bits cleared on {len(cleaned['stripped'])} file(s) "
                     f"({', '.join(cleaned['stripped'][:shown])})")
    if cleaned["dropped"]:
        parts.append(f"{len(cleaned['dropped'])} device node(s)/fifo(s)/socket(s) removed "
                     f"({', '.join(d['path'] + ' [' + d['kind'] + ']' for d in cleaned['dropped'][:shown])})")
    return "; ".join(parts) or "nothing to clean"


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ReleaseError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-300:]}")


def main(argv: list[str]) -> int:
    workdir, image = Path(argv[0]), Path(argv[1])
    # its own session keeps a terminal's Ctrl-C and a SIGKILL of the trial's group away, but a scheduler signals
    # every process of a job (scancel: SIGTERM to all of them): the guard outlives its owner to do its one job
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    asked = sys.stdin.readline()  # blocks until the owner asks, or its end of the pipe closes (it died)
    try:
        release(workdir, image)
    except (ReleaseError, OSError) as exc:
        _say(f"the workdir {workdir} was not released ({'asked' if asked else 'its owner died'}): {exc}")
        return 1
    if not asked:
        _say(f"the owner of {workdir} died; its workdir was released")
    return 0


def _say(line: str) -> None:
    # names of the agent's files are in it: every unprintable character shown escaped (textsafe's rule, without
    # importing the package)
    line = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in line)
    try:
        print(f"[autoembed] {line}", file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):  # the owner's stderr went with it
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
