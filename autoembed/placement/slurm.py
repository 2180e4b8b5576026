"""A Slurm cluster as a place, through submitit: each trial is one job (with `--gres=gpu:1` when the place has
GPUs), and the whole trial runs inside it: the sandbox, the gateway and the sealed scorer, on the node Slurm picks.

submitit writes the sbatch script, pickles the call, and raises a job that failed, was cancelled or lost its node
as an exception, which the pool takes as this place failing and retries elsewhere. Its `local` cluster runs the
same jobs as processes here (cluster="local"), the fallback where no Slurm answers.

What the nodes need: this Python install and the repository at the same paths, and the trial's folder and
submitit's job folder on a filesystem the submitting host shares with them (as any Slurm job needs). The sandbox in a
job is bwrap unless another is asked for: it stays inside the job's cgroup and GPU allocation, where a container
started by a node's Docker engine would not.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from autoembed.paths import traces_dir
from autoembed.placement.place import Place, PlaceFailed, Say, outcome_run_dir

CLUSTERS = ("slurm", "local")
MARGIN_MIN = 30  # image checks, scorer preparation and scoring around the agent's budget
POLL_S = 2.0


@dataclass
class SlurmJobs:
    """SlurmPlace's keyword arguments: how each trial's job is asked for."""
    gpu_per_job: bool = False
    partition: str | None = None
    folder: Path | None = None
    cluster: str = "slurm"
    timeout_min: int | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    extra: dict | None = None


class SlurmPlace(Place):
    kind = "slurm"

    def __init__(self, name: str, jobs: int = 1, **options):
        """jobs: trials in flight at once (each a job); keywords (SlurmJobs): gpu_per_job: ask each job for one GPU
        (--gres=gpu:1); partition, folder, cluster, timeout_min, cpus_per_job, mem_gb; extra: more sbatch options
        as submitit's slurm_additional_parameters (e.g. {"account": "lab"})."""
        job = SlurmJobs(**options)  # an unknown keyword is a TypeError, as with a plain signature
        super().__init__(name, (), cpu_slots=jobs)
        if job.cluster not in CLUSTERS:
            raise ValueError(f"place {name}: cluster must be one of {', '.join(CLUSTERS)}, got {job.cluster!r}")
        if job.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError(f"place {name}: sbatch is not on PATH; install Slurm's client (apt-get install -y "
                             "slurm-client) or use cluster='local' to run the jobs on this machine")
        self.jobs = jobs
        self.gpu_per_job = job.gpu_per_job
        self.partition = job.partition
        self.folder = Path(job.folder) if job.folder else traces_dir() / "placement" / name
        self.cluster = job.cluster
        self.timeout_min = job.timeout_min
        self.cpus_per_job = job.cpus_per_job
        self.mem_gb = job.mem_gb
        self.extra = dict(job.extra or {})

    def executor(self, hours: float | None):
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        minutes = self.timeout_min or (math.ceil(hours * 60) + MARGIN_MIN if hours else 24 * 60)
        params: dict = {"timeout_min": minutes, "name": f"autoembed-{self.name}", "nodes": 1, "tasks_per_node": 1}
        if self.cpus_per_job:
            params["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.cluster == "slurm":
            if self.partition:
                params["slurm_partition"] = self.partition
            if self.gpu_per_job:
                params["slurm_gres"] = "gpu:1"
            # the pool retries a trial whose job died, on whichever place is free: Slurm's own requeue (after a
            # node failure) would rerun it a second time, into the same folder
            params["slurm_additional_parameters"] = {"no-requeue": True, **self.extra}
        executor.update_parameters(**params)
        return executor

    def problem(self) -> str | None:
        if self.cluster != "slurm":
            return None
        try:
            done = subprocess.run(["sinfo", "--noheader", "--responding"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"sinfo failed: {exc}"
        if done.returncode != 0:
            return f"the Slurm controller does not answer: {done.stderr.strip()[:200]}"
        return None

    def run_trial(self, run_kwargs: dict, gpu: str | None = None, say: Say | None = None) -> Path:
        import submitit

        say = say or (lambda line: None)
        kwargs = {k: v for k, v in run_kwargs.items() if k != "progress"}
        if kwargs.get("sandbox", "auto") == "auto":
            kwargs["sandbox"] = "bwrap"
        run_dir = Path(kwargs["out"]) if kwargs.get("out") else None
        job = self.executor(kwargs.get("hours")).submit(slurm_job, kwargs, self.gpu_per_job)
        say(f"{self.name}: submitted as {self.cluster} job {job.job_id}")
        limit = time.time() + (self.timeout_min or 24 * 60) * 60 + 600
        try:
            while not job.done():
                if time.time() > limit:
                    job.cancel(check=False)
                    raise PlaceFailed(f"{self.cluster} job {job.job_id} did not finish in its time limit", run_dir)
                time.sleep(POLL_S)
            outcome = job.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
            raise PlaceFailed(f"{self.cluster} job {job.job_id} failed: {str(exc).strip()[-1500:]}", run_dir) from exc
        except BaseException:
            job.cancel(check=False)  # interrupted here: the job is not left running on the cluster
            raise
        if outcome.get("exit_reason") == "interrupted":  # SIGTERM inside a job comes from Slurm: the job was cancelled,
            # preempted or hit its time limit, or its node is going down; the trial ended early but did not fail itself
            raise PlaceFailed(f"{self.cluster} job {job.job_id} was stopped by Slurm during the trial (cancelled, "
                              "preempted, out of time or its node going down)", run_dir)
        return outcome_run_dir(outcome, self)

    def describe(self) -> dict:
        return {**super().describe(), "jobs": self.jobs, "gpu_per_job": self.gpu_per_job, "cluster": self.cluster,
                "partition": self.partition}


def slurm_job(run_kwargs: dict, gpu_per_job: bool) -> dict:
    """What runs inside the job: the trial, with the job, node and GPU Slurm gave it in its placement record."""
    from autoembed.placement.worker import run_trial_here

    gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if gpu_per_job else None
    placement = {**(run_kwargs.get("placement") or {}), "gpu": gpu, "node": socket.gethostname(),
                 "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")}
    return run_trial_here({**run_kwargs, "placement": placement}, gpu)
