"""A second, private Docker engine on this machine, for the audit's lost-engine case and the placement tests: its own
--data-root, --exec-root, --pidfile and unix socket, no bridge and no iptables (trials run with network none).
Started as root, stopped after.

It runs in a network namespace of its own (unshare --net): a dockerd started with --bridge=none deletes the
docker0 interface it finds, which in the shared namespace is the first engine's bridge (its builds then fail
with "could not find bridge docker0"). The Unix socket is a file, reachable from any namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def engine_problem() -> str | None:
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        return "dockerd missing: apt-get install -y docker.io"
    if shutil.which("unshare") is None:
        return "unshare missing: apt-get install -y util-linux"
    if os.geteuid() != 0:
        return "a second dockerd runs as root"
    return None


class SecondEngine:
    def __init__(self, root: Path):
        self.root = Path(root)  # keep it short: the socket path must fit in 108 bytes
        self.url = f"unix://{self.root}/docker.sock"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "SecondEngine":
        self.root.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        log = open(self.root / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", "dockerd", f"--data-root={self.root}/data", f"--exec-root={self.root}/exec", f"--pidfile={self.root}/pid",
             f"-H={self.url}", "--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdout=log, stderr=log, start_new_session=True)
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.root / 'dockerd.log').read_text()[-3000:]}")
            if subprocess.run(["docker", "info"], env={**os.environ, "DOCKER_HOST": self.url},
                              capture_output=True).returncode == 0:
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"dockerd did not answer in {timeout} s: {(self.root / 'dockerd.log').read_text()[-3000:]}")

    def _stop_leftover(self, timeout: float = 60) -> None:
        """An engine on this root that a killed run left (its pid file names a live dockerd of this root): stopped,
        since a second dockerd on the same pid file refuses to start."""
        try:
            pid = int((self.root / "pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return
        if "dockerd" not in cmdline or f"--data-root={self.root}/data" not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        end = time.time() + timeout
        while time.time() < end and Path(f"/proc/{pid}").exists():
            time.sleep(0.5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, as an engine going down for maintenance: it stops its containers and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
