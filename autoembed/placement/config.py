"""Places written down once, in TOML, for the command line and notebooks:

    [[place]]                       # this machine's GPUs 0 and 1
    name = "here"
    kind = "local"
    gpus = ["0", "1"]

    [[place]]                       # a Docker engine on another GPU host (shared paths: see docker_engine.py)
    name = "box2"
    kind = "docker"
    url = "ssh://me@box2"
    gpus = ["0", "1", "2", "3"]

    [[place]]                       # a Slurm cluster: 16 jobs in flight, one GPU each
    name = "cluster"
    kind = "slurm"
    jobs = 16
    gpu_per_job = true
    partition = "gpu"
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from autoembed.placement.docker_engine import DockerPlace
from autoembed.placement.place import KINDS, LocalPlace, Place
from autoembed.placement.slurm import SlurmPlace

KEYS = {
    "local": {"gpus", "cpu_slots"},
    "docker": {"url", "gpus", "cpu_slots"},
    "slurm": {"jobs", "gpu_per_job", "partition", "folder", "cluster", "timeout_min", "cpus_per_job", "mem_gb", "extra"},
}


def load_pool(path: Path | str, say):
    """A Pool over the places a TOML file lists; its messages go to say, prefixed "placement: "."""
    from autoembed.placement.pool import Pool

    return Pool(load_places(Path(path)), say=lambda msg: say(f"placement: {msg}"))


def load_places(path: Path) -> list[Place]:
    """The places a TOML file lists; ValueError naming the file, the place and the fix on anything wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read places: {exc}") from None
    entries = data.get("place")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: no [[place]] tables; see autoembed/placement/config.py for an example")
    return [place_from_dict(entry, f"{path} place {i + 1}") for i, entry in enumerate(entries)]


def place_from_dict(entry: dict, where: str = "place") -> Place:
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if "name" not in entry:
        raise ValueError(f"{where}: a place needs a name")
    options = {k: v for k, v in entry.items() if k not in ("name", "kind")}
    unknown = set(options) - KEYS[kind]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a {kind} place "
                         f"(known: {', '.join(sorted(KEYS[kind]))})")
    if "gpus" in options:
        options["gpus"] = [str(g) for g in options["gpus"]]
    try:
        if kind == "local":
            return LocalPlace(entry["name"], **options)
        if kind == "docker":
            if "url" not in options:
                raise ValueError("a docker place needs url (unix://, tcp:// or ssh://, as DOCKER_HOST)")
            return DockerPlace(entry["name"], **options)
        return SlurmPlace(entry["name"], **options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
