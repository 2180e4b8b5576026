"""Sandbox overhead: time from start() to the first command's output, and from stop() to done,
for bwrap and docker (plus, for docker, the cached image check a trial pays first).

    python bench/bench_sandbox_overhead.py [--reps 5] [--no-write]

Writes the section "Sandbox overhead (this machine, CPU)" of bench/RESULTS.md (other sections kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoembed import paths
from autoembed.sandbox.base import SandboxConfig

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Sandbox overhead (this machine, CPU)"
TRIAL_S = 600  # the yardstick: overhead under 5% of a 10-minute trial


def time_one(make, workdir: Path) -> dict[str, float]:
    box = make(SandboxConfig(workdir=workdir, deadline=time.time() + 300))
    t0 = time.perf_counter()
    box.start()
    result = box.exec(["echo", "ready"])
    t_exec = time.perf_counter() - t0
    assert result.stdout.strip() == "ready", result
    t1 = time.perf_counter()
    proc = box.spawn(["echo", "spawned"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline()
    t_spawn = time.perf_counter() - t1
    proc.wait()
    assert line.strip() == b"spawned", line
    t2 = time.perf_counter()
    box.stop()
    t_stop = time.perf_counter() - t2
    return {"start_to_first_output": t_exec, "spawn_to_first_line": t_spawn, "stop": t_stop}


def bench(kind: str, reps: int, cold_build: bool = False) -> dict:
    extra = {}
    if kind == "bwrap":
        from autoembed.sandbox.bwrap import BwrapSandbox, bwrap_problem

        if bwrap_problem():
            return {"skipped": bwrap_problem()}
        make = BwrapSandbox
    else:
        from autoembed.sandbox.docker import DockerSandbox
        from autoembed.sandbox.factory import docker_problem
        from autoembed.sandbox.image import docker_client, ensure_task_image

        if docker_problem():
            return {"skipped": docker_problem()}
        if cold_build:
            t0 = time.perf_counter()
            ensure_task_image(paths.DEFAULT_TASK, force=True)
            extra["cold_build_s"] = time.perf_counter() - t0
        image = ensure_task_image(paths.DEFAULT_TASK)  # build outside the timing
        t0 = time.perf_counter()
        ensure_task_image(paths.DEFAULT_TASK)
        extra["cached_image_check"] = time.perf_counter() - t0
        extra["image"] = image
        extra["image_gb"] = docker_client().images.get(image).attrs["Size"] / 1e9

        def make(config):
            config.image = image
            return DockerSandbox(config)

    runs = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
            runs.append(time_one(make, Path(tmp)))
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    summary["max_start_to_first_output"] = max(r["start_to_first_output"] for r in runs)
    return {**summary, **extra, "reps": reps}


def render(results: dict[str, dict]) -> str:
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} CPUs, "
             f"{platform.platform(terse=True)}) by `python bench/bench_sandbox_overhead.py`: median of the "
             "repetitions, seconds. *start → first output*: `start()` until `exec(['echo', 'ready'])` returns; "
             "*spawn → first line*: a `spawn()` (how CLI agents run) until its first stdout line; *stop*: "
             "`stop()` until every process is gone (docker: the container removed).", "",
             "| sandbox | start → first output | (max) | spawn → first line | stop | share of a 10-min trial |",
             "|---|---|---|---|---|---|"]
    for kind, r in results.items():
        if "skipped" in r:
            lines.append(f"| {kind} | skipped: {r['skipped']} | | | | |")
            continue
        total = r["start_to_first_output"] + r["stop"] + r.get("cached_image_check", 0.0)
        lines.append(f"| {kind} | {r['start_to_first_output']:.3f} | {r['max_start_to_first_output']:.3f} | "
                     f"{r['spawn_to_first_line']:.3f} | {r['stop']:.3f} | {100 * total / TRIAL_S:.2f}% |")
    docker = results.get("docker", {})
    if "image" in docker:
        lines += ["", f"docker also checks its image before each trial (content hash of its inputs): "
                      f"{docker['cached_image_check']:.2f} s when cached, included "
                      f"in the share above. Image `{docker['image']}`: {docker['image_gb']:.2f} GB."]
        if "cold_build_s" in docker:
            lines[-1] += (f" Building it from scratch (mmdebstrap's Debian plus this machine's trial stack into "
                          f"`docker import`, then the task Dockerfile) took {docker['cold_build_s']:.0f} s; it happens "
                          "once per machine and again only when its inputs change; the small task layer on top is "
                          "rebuilt whenever the autoembed package changes.")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    if SECTION in old:
        head, rest = old.split(SECTION, 1)
        following = rest.find("\n## ")
        tail = rest[following + 1:] if following >= 0 else ""
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--cold-build", action="store_true",
                        help="first rebuild the docker images from scratch and report how long that took")
    args = parser.parse_args(argv)
    results = {kind: bench(kind, args.reps, args.cold_build) for kind in ("bwrap", "docker")}
    text = render(results)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
