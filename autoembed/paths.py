"""Where things live. One place, so the sandbox knows exactly what to hide."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SEALED_DIR = PACKAGE_DIR / "sealed"
TASKS_DIR = Path(os.environ.get("AUTOEMBED_TASKS", REPO_ROOT / "tasks"))
DEFAULT_TASK = "embed"


def home() -> Path:
    """Harness-side state (seed manifests, token caches). Never visible inside a sandbox."""
    path = Path(os.environ.get("AUTOEMBED_HOME", Path.home() / ".cache" / "autoembed"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def traces_dir() -> Path:
    return Path(os.environ.get("AUTOEMBED_TRACES", REPO_ROOT / "traces"))


def task_dir(name_or_path: str | os.PathLike) -> Path:
    """A task by name (tasks/<name>) or by path to its folder; a clear error if neither exists."""
    candidate = Path(name_or_path)
    if (candidate / "task.toml").is_file():
        return candidate.resolve()
    by_name = TASKS_DIR / str(name_or_path)
    if (by_name / "task.toml").is_file():
        return by_name.resolve()
    known = sorted(p.parent.name for p in TASKS_DIR.glob("*/task.toml")) if TASKS_DIR.is_dir() else []
    raise FileNotFoundError(
        f"no task {str(name_or_path)!r}: expected a folder with task.toml, or one of {known} under {TASKS_DIR}"
    )
