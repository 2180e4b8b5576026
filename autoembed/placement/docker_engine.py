"""A Docker engine as a place: the agent's container runs on that engine, the harness side (the trial's process,
its LLM gateway and the sealed scorer) runs here.

The engine is named the way DOCKER_HOST names one (unix:///var/run/docker.sock, tcp://host:2376, ssh://user@host),
and each trial is this package's worker in a child process whose DOCKER_HOST is that URL, so the sandbox code
(autoembed/sandbox/docker.py, the SDK and `docker exec`) is the same for every engine.

What the engine must see: the container bind-mounts the trial's workdir, the gateway's socket folder and this
machine's Python install at the same paths as here. A local engine sees them; a remote one (tcp://, ssh://) needs
those paths on a filesystem both hosts mount at the same place, as Slurm needs a shared filesystem, and a gateway
socket that reaches across hosts, which a Unix socket does not: on a remote engine only model-free agents
(recipe, search) work. Trials of LLM agents on other hosts go through Slurm, where the whole trial runs there.

The task image must exist on every engine: before the first trial there, the root filesystem image this machine's
default engine has (made when missing) is streamed over with `docker save | docker load` (the large part, once per
engine and rootfs version), and the thin task image is built on top there; with no local engine, both are built
on the place's engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from autoembed.placement.place import Place, PlaceFailed, Say, outcome_run_dir

SCHEMES = ("unix://", "tcp://", "ssh://")
PING_TIMEOUT_S = 10
DEFAULT_URL = "unix:///var/run/docker.sock"
_SOURCE_LOCK = threading.Lock()  # places prepared side by side build or read the local image once, not once each


class DockerPlace(Place):
    kind = "docker"
    recheck_after_every_trial = True

    def __init__(self, name: str, url: str, gpus: list[str] | tuple[str, ...] = (), cpu_slots: int = 1):
        super().__init__(name, gpus, cpu_slots)
        if not url.startswith(SCHEMES):
            raise ValueError(f"place {name}: docker URL {url!r} must start with {', '.join(SCHEMES)} "
                             "(as DOCKER_HOST does), e.g. unix:///var/run/docker.sock or ssh://me@gpu-box")
        if url.startswith("ssh://"):
            try:
                import paramiko  # noqa: F401 - the docker SDK reaches ssh:// engines through it
            except ImportError:
                raise ValueError(f"place {name}: an ssh:// engine needs paramiko: pip install 'docker[ssh]'") from None
        self.url = url

    @property
    def remote(self) -> bool:
        return not self.url.startswith("unix://")

    def client(self, timeout: int = PING_TIMEOUT_S):
        import docker

        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def problem(self) -> str | None:
        try:
            self.client().ping()
        except Exception as exc:  # noqa: BLE001 - any failure to answer means the engine cannot run trials
            return f"the Docker engine at {self.url} does not answer ({type(exc).__name__}: {str(exc)[:200]})"
        return None

    def prepare(self, task: str, say: Say) -> None:
        problem = self.problem()
        if problem:
            raise PlaceFailed(problem)
        try:
            ensure_image_on(self, task, say)
        except Exception as exc:  # noqa: BLE001 - an engine that cannot hold the image cannot run the trial
            raise PlaceFailed(f"the task image could not be put on {self.url}: {exc}") from exc

    def run_trial(self, run_kwargs: dict, gpu: str | None = None, say: Say | None = None) -> Path:
        say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        kwargs = {k: v for k, v in run_kwargs.items() if k != "progress"}
        kwargs["sandbox"] = "docker"
        with tempfile.TemporaryDirectory(prefix="autoembed-place-") as tmp:
            request, outcome_path = Path(tmp) / "request.json", Path(tmp) / "outcome.json"
            request.write_text(json.dumps({"run_kwargs": kwargs, "gpu": gpu}, default=str))
            env = {**os.environ, "DOCKER_HOST": self.url}
            proc = subprocess.Popen([sys.executable, "-m", "autoembed.placement.worker", str(request), str(outcome_path)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            reader = threading.Thread(target=_forward, args=(proc.stdout, say), daemon=True)
            reader.start()
            try:
                code = proc.wait()
            except BaseException:  # the pool was interrupted: the trial records it (SIGTERM acts as Ctrl-C there)
                proc.terminate()
                proc.wait()
                raise
            reader.join(5)
            if not outcome_path.is_file():
                raise PlaceFailed(f"the trial's process on {self.name} ended with {code} and no outcome",
                                  Path(kwargs["out"]) if kwargs.get("out") else None)
            return outcome_run_dir(json.loads(outcome_path.read_text()), self)

    def describe(self) -> dict:
        return {**super().describe(), "url": self.url}


def _forward(stream, say: Say) -> None:
    for line in stream:
        say(line.rstrip("\n"))


def ensure_image_on(place: DockerPlace, task: str, say: Say) -> str:
    """The task image's tag, present on the place's engine. The root filesystem image (the large part) is streamed
    from this machine's default engine when that is another engine and has it (made there when missing); the thin
    task image on top is then built on the place's engine itself (seconds), as everything is when no local engine
    answers."""
    from autoembed.sandbox.image import BUILD_TIMEOUT_S, ensure_rootfs, ensure_task_image, image_exists

    target = place.client(BUILD_TIMEOUT_S)
    source_url = os.environ.get("DOCKER_HOST", DEFAULT_URL)
    source = None
    if source_url != place.url:
        try:
            import docker

            source = docker.DockerClient(base_url=source_url, timeout=BUILD_TIMEOUT_S)
            source.ping()
        except Exception:  # noqa: BLE001 - no local engine: build on the place's engine instead
            source = None
    if source is not None:
        with _SOURCE_LOCK:
            rootfs_id = ensure_rootfs(source, task, progress=say)
        if not image_exists(target, rootfs_id):  # image ids are content hashes: the same on both engines
            say(f"{place.name}: copying the task's root filesystem image from {source_url} to {place.url} "
                "(docker save | docker load)")
            ship_images([rootfs_id], source_url, place.url)
    if source is None and place.url == source_url:  # the default engine itself: one build however many ask
        with _SOURCE_LOCK:
            return ensure_task_image(task, target, progress=say)
    return ensure_task_image(task, target, progress=say)


def ship_images(tags: list[str], source_url: str, target_url: str) -> None:
    """`docker save TAGS | docker load` between two engines: shared layers travel once."""
    save = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DOCKER_HOST": source_url})
    load = subprocess.run(["docker", "load", "--quiet"], stdin=save.stdout, capture_output=True, text=True,
                          env={**os.environ, "DOCKER_HOST": target_url})
    save.stdout.close()
    save_err = save.stderr.read().decode(errors="replace")
    if save.wait() != 0 or load.returncode != 0:
        raise RuntimeError(f"docker save | docker load failed: {save_err[-500:]} {load.stderr[-500:]}")
