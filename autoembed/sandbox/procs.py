"""Process plumbing the sandboxes share: the in-sandbox init, process-group Popen, pipe draining."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Callable

import psutil

# PID 1 inside a sandbox: reaps orphans (a double-forked process lands here) and exits at the
# deadline, which makes the kernel kill everything else in the PID namespace. It survives the
# agent's `kill -9 -1`: PID 1 gets no signal it has no handler for from inside its namespace.
REAPER = """
import os, signal, sys, time
deadline = float(sys.argv[1])
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
if len(sys.argv) > 2:
    os.write(int(sys.argv[2]), b"ready")
    os.close(int(sys.argv[2]))
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    left = deadline - time.time()
    if left <= 0:
        sys.exit(0)
    signal.sigtimedwait([signal.SIGCHLD], min(left, 60.0))
"""


class GroupPopen(subprocess.Popen):
    """A Popen started in its own session whose signals reach its whole process group: killing the
    launcher (nsenter) alone would leave the command it started inside the sandbox running.

    A catchable signal (SIGTERM: "save and stop") goes to the group but not to the launcher, which
    would die of it at once and report -15 while the command inside is still saving; the launcher
    stays to report the command's real exit status."""

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is not None:
            return
        inside = [pid for pid in group_members(self.pid) if pid != self.pid]
        if sig == signal.SIGKILL or not inside:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            return
        for pid in inside:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def pids_where(test: Callable[[psutil.Process], bool]) -> list[int]:
    """Pids of the host's processes (this one excepted) for which test(process) holds; a process that ends or
    hides its details while it is looked at is skipped."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if test(proc):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def pids_with_cmdline(*needles: str, program: str | None = None, live: bool = False) -> list[int]:
    """Processes whose command line (arguments joined by spaces) holds every needle; program: its first argument
    ends so (e.g. "bwrap"); live: zombies left out (they are already dead)."""
    def test(proc: psutil.Process) -> bool:
        argv = proc.cmdline()
        if program is not None and not (argv and argv[0].endswith(program)):
            return False
        if live and proc.status() == psutil.STATUS_ZOMBIE:
            return False
        text = " ".join(argv)
        return all(n in text for n in needles)
    return pids_where(test)


def group_members(pgid: int) -> list[int]:
    """Pids of the processes in process group pgid."""
    return pids_where(lambda proc: os.getpgid(proc.pid) == pgid)


def communicate_or_kill(proc: subprocess.Popen, timeout: float) -> tuple[str, str, bool]:
    """Wait up to timeout; on expiry kill the process group. Returns (stdout, stderr, timed_out).

    A background process that keeps the pipe open must not hold the caller past the timeout, so
    after the kill the pipes get a short grace and are then abandoned.
    """
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.001))
        return out or "", err or "", False
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        out, err = proc.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        out, err = "", "[output lost: a background process kept the pipes open]"
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        proc.wait()
    return out or "", err or "", True


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once process pid no longer exists (or is a zombie nobody will reap)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            if psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def read_until(fd: int, done, timeout: float) -> bytes:
    """Read from fd until done(data) holds, the writer closes it, or timeout seconds pass."""
    data = b""
    end = time.time() + timeout
    while not done(data) and time.time() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.time()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data
