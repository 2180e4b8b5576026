"""No sandbox: runs in place. Integrity is NOT structural here; it says so loudly.

For trusted use only: the agent runs as the user who started the trial (root, if that is root), with no limits on
memory, CPU or scratch space; the workdir is still made inert when the trial records its limits (run.py)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

from autoembed.sandbox import procs
from autoembed.sandbox.base import ExecResult, Sandbox

# Every process the trial starts carries this variable with the trial's own value: stop() finds by it what left
# the process groups it knows (a CLI's tool that started its own session, a child whose group leader exited)
MARK = "AUTOEMBED_NONE_SANDBOX"

WARNING = ("WARNING: sandbox 'none' runs the agent in place with your user's rights: it can read the sealed "
           "held-out data and anything else you can. Scores from such a trial are not structurally protected.")


class NoSandbox(Sandbox):
    kind = "none"

    def __init__(self, config):
        super().__init__(config)
        self._procs: list[subprocess.Popen] = []
        self._mark = secrets.token_hex(8)

    @property
    def workdir_inside(self) -> str:
        return str(self.config.workdir)

    def start(self) -> None:
        print(WARNING, file=sys.stderr)
        if self.config.gateway_socket:  # no namespace of its own: the forwarder takes a free port on the host
            self.start_forwarder(port=0)

    def gateway_socket_inside(self) -> str:
        return str(self.config.gateway_socket)

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        merged = dict(os.environ)
        if not self.config.gpus:
            merged["CUDA_VISIBLE_DEVICES"] = ""
        else:
            merged["CUDA_VISIBLE_DEVICES"] = ",".join(self.config.gpus)
        merged.update(self.config.env)
        merged.update(env or {})
        merged[MARK] = self._mark
        return merged

    def _cwd(self, cwd: str | None) -> str:
        return os.path.join(self.workdir_inside, cwd) if cwd and not os.path.isabs(cwd) else (cwd or self.workdir_inside)

    def exec(self, command, *, timeout=None, env=None, cwd=None) -> ExecResult:
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        limit = max(0.0, self.seconds_left())
        timeout = limit if timeout is None else min(timeout, limit)
        start = time.time()
        proc = subprocess.Popen(argv, cwd=self._cwd(cwd), env=self._env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        self._procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
            return ExecResult(proc.returncode, out, err, False, time.time() - start)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return ExecResult(-9, out, err, True, time.time() - start)

    def spawn(self, argv, *, stdout, stderr, env=None, cwd=None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=self._cwd(cwd), env=self._env(env), stdout=stdout, stderr=stderr,
                                stdin=stdin, start_new_session=True)
        self._procs.append(proc)
        return proc

    def stop(self) -> None:
        """Kill everything the trial started: each process group (also where its leader has exited) and every
        process still carrying the trial's mark (a best effort: with no sandbox a process can clear its own
        environment)."""
        for proc in self._procs:
            _kill_group(proc)
        self._procs.clear()
        marked = procs.pids_where(lambda p: p.environ().get(MARK) == self._mark)
        for pid in marked:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in marked:
            procs.wait_gone(pid, 5.0)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the process's group even where the leader has exited: its children may still be in it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
