"""A real single-host Slurm for tests: munged, slurmctld and slurmd from Debian's packages (apt-get install -y
slurm-wlm munge), with a generated slurm.conf and every file in one folder, started as root and stopped after.

Clients (sbatch, sinfo, sacct, and submitit through them) find this cluster through SLURM_CONF. No accounting
daemon: submitit then learns that a job ended from its result file (sacct only says so on a full cluster).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def problem() -> str | None:
    """Why no test Slurm can start here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} missing: apt-get install -y slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test Slurm's daemons run as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestSlurm:
    __test__ = False  # not a pytest class

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge.sock"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        host = socket.gethostname()
        cpus = os.cpu_count() or 1
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=autoembedtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.root}/log/slurmctld.log
SlurmdLogFile={self.root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        # no GPUs here, so no GresTypes/Gres lines: gres is configured only where GPUs exist

    def start(self, timeout: float = 60) -> "TestSlurm":
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        key = self.root / "munge.key"
        key.write_bytes(secrets.token_bytes(128))
        key.chmod(0o600)
        self.write_conf()
        env = {**os.environ, **self.env}
        log = open(self.root / "log" / "daemons.log", "ab")
        self.procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.root}/munged.pid", f"--log-file={self.root}/log/munged.log",
             f"--seed-file={self.root}/munged.seed"], stdout=log, stderr=log))
        _wait_for(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket", self)
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)], env=env, stdout=log, stderr=log))
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(self.conf)], env=env, stdout=log, stderr=log))

        def idle() -> bool:
            done = subprocess.run(["sinfo", "--noheader", "-o", "%t"], env=env, capture_output=True, text=True)
            return done.returncode == 0 and done.stdout.strip() in ("idle", "mix", "alloc")

        _wait_for(idle, timeout, "the node never became idle", self)
        return self

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel what is still queued or running while the daemons can still end it (a job step outlives a
        stopped slurmd), then stop the daemons."""
        env = {**os.environ, **self.env}
        if self.procs and all(p.poll() is None for p in self.procs):
            subprocess.run(["scancel", "--user", str(os.getuid())], env=env, capture_output=True, timeout=30)
            end = time.time() + 60
            while time.time() < end:
                queue = subprocess.run(["squeue", "--noheader"], env=env, capture_output=True, text=True, timeout=30)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(1)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def _wait_for(check, timeout: float, message: str, slurm: TestSlurm) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if check():
            return
        if any(p.poll() is not None for p in slurm.procs):
            break
        time.sleep(0.5)
    slurm.stop()
    raise RuntimeError(f"test Slurm: {message}\n{slurm.logs()}")
