"""Seed a workdir with the agent-facing files, and only those.

    manifest = seed_workdir("runs/w1", hours=2)

writes task.py, instructions.md, timer.sh (the deadline baked in), data/dev/<task>/* and
data/pool/pairs.jsonl.gz. Nothing of autoembed/sealed/ goes there. The seed manifest (sha256 of
every seeded file, the deadline) is kept harness-side, in autoembed.paths.home()/seeds/, where the
scorer's tampering audit finds it; it is never written into the workdir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from autoembed import paths
from autoembed.task.base_model import file_sha256, resolve_base_model
from autoembed.task.spec import TaskSpec, load_spec

TEMPLATES = "autoembed.task.agent_files"
# The files the agent gets, besides the data; the tampering audit checks these.
AGENT_FILES = ("task.py", "instructions.md", "timer.sh")
POOL_FILE = "data/pool/pairs.jsonl.gz"  # where the training pool lies in every seeded workdir


class SeedError(RuntimeError):
    pass


def seed_workdir(workdir: str | os.PathLike, hours: float, task: str | TaskSpec = "embed", *,
                 base_model: str | None = None, now: float | None = None) -> dict:
    """Write the agent-facing files into workdir (created; must be empty if it exists) and return the
    seed manifest, also saved at manifest_path(workdir).

    base_model: the path task.py names as BASE_MODEL (default: the resolved base model of the task;
    a sandbox that mounts the model elsewhere passes its path there).
    now: the start time (epoch seconds); the deadline is now + hours."""
    if hours <= 0:
        raise SeedError(f"hours must be positive, got {hours}")
    spec = task if isinstance(task, TaskSpec) else load_spec(task)
    workdir = Path(workdir)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise SeedError(f"{workdir} exists and is not an empty folder: seed a new folder")
    if base_model is None:
        base_model = str(resolve_base_model(spec.base_model, spec.base_model_sha256))
    sources = data_sources(spec)
    start = time.time() if now is None else float(now)
    deadline = int(start + hours * 3600)

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "task.py").write_text(render_task_py(spec, base_model), encoding="utf-8")
    (workdir / "instructions.md").write_text(render_instructions(spec, hours, deadline), encoding="utf-8")
    (workdir / "timer.sh").write_text(render_timer(deadline), encoding="utf-8")
    (workdir / "timer.sh").chmod(0o755)
    for rel, source in sources.items():
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # A copy, never a hard link: a hard link shares the inode with the harness's own data, and an
        # agent writing to the file in place would change the harness's copy too.
        shutil.copyfile(source, target)

    manifest = {
        "workdir": str(workdir.resolve()),
        "task": spec.name,
        "task_dir": str(spec.root),
        "hours": hours,
        "created": start,
        "deadline": deadline,
        "deadline_utc": _utc(deadline),
        "base_model": base_model,
        "files": {rel: file_sha256(workdir / rel) for rel in [*AGENT_FILES, *sources]},
    }
    path = manifest_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_path(workdir: str | os.PathLike) -> Path:
    key = hashlib.sha256(os.path.realpath(workdir).encode()).hexdigest()
    return paths.home() / "seeds" / f"{key}.json"


def load_manifest(workdir: str | os.PathLike) -> dict | None:
    path = manifest_path(workdir)
    return json.loads(path.read_text()) if path.is_file() else None


def data_sources(spec: TaskSpec) -> dict[str, Path]:
    """Workdir-relative path -> the harness's file, for every data file the agent gets."""
    out: dict[str, Path] = {}
    for name in spec.dev_tasks:
        folder = spec.dev_dir / name
        if not (folder / "qrels.tsv").is_file():
            raise SeedError(f"dev task {name!r}: no data at {folder} (expected corpus.jsonl.gz, queries.jsonl.gz, qrels.tsv)")
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.is_symlink():
                out[f"data/dev/{name}/{path.name}"] = path
    if not spec.pool_path.is_file():
        raise SeedError(f"no training pool at {spec.pool_path}")
    out[POOL_FILE] = spec.pool_path
    return out


def render_task_py(spec: TaskSpec, base_model: str) -> str:
    return _fill(_template("task.py"), {
        "BASE_MODEL": base_model, "TASK": spec.name, "DEV_TASKS": list(spec.dev_tasks),
        "FAST_QUERIES": spec.fast_queries, "FAST_DOCS": spec.fast_docs, "MAX_SEQ_LENGTH": spec.max_seq_length,
    }, quoted=True)


def render_timer(deadline: int) -> str:
    return _fill(_template("timer.sh"), {"DEADLINE": deadline, "DEADLINE_UTC": _utc(deadline)}, quoted=False)


def render_instructions(spec: TaskSpec, hours: float, deadline: int) -> str:
    if spec.instructions is None:
        raise SeedError(f"task {spec.name!r} has no instructions.md in {spec.root}")
    text = spec.instructions.read_text(encoding="utf-8")
    values = {"HOURS": f"{hours:g}", "DEADLINE_UTC": _utc(deadline), "DEV_TASKS": ", ".join(spec.dev_tasks)}
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        left = text[text.index("{{"):].split("}}")[0] + "}}"
        raise SeedError(f"{spec.instructions}: unknown placeholder {left}; known: {sorted(values)}")
    return text


def _template(name: str) -> str:
    return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")


def _fill(text: str, values: dict, quoted: bool) -> str:
    """Replace "__NAME__" (quoted: by the value's Python repr) or __NAME__ (by str(value))."""
    for key, value in values.items():
        text = text.replace(f'"__{key}__"', repr(value)) if quoted else text.replace(f'"__{key}__"', str(value))
        text = text.replace(f"__{key}__", str(value))
    return text


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
