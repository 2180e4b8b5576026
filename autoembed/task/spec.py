"""tasks/<name>/task.toml, parsed into one frozen object."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from autoembed.paths import task_dir

# [eval] main_metric where task.toml names none, and the one metric the evaluator bootstraps a CI for and returns
# per query (the scorer refuses a main_metric it has no per-query values of)
MAIN_METRIC = "ndcg@10"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    root: Path
    base_model: str  # "package:<module>" (an installed model package), a local path, or a hub id
    base_model_sha256: str | None
    hours: float
    max_usd: float | None  # the LLM gateway's caps for one trial ([budget] usd, tokens, call_timeout_s)
    max_tokens: int | None
    call_timeout_s: float
    dev_dir: Path  # BEIR-style folders, one per dev task
    dev_tasks: tuple[str, ...]
    pool_path: Path  # jsonl.gz of {"query", "positive", "domain", "group"}
    main_metric: str = MAIN_METRIC
    fast_queries: int = 200
    fast_docs: int = 1000
    max_seq_length: int = 256
    memory_gb: float | None = None  # [limits]: the sandbox's memory, process count and workdir size, fitted to the host
    pids: int | None = None
    disk_gb: float | None = None
    cpus: float | None = None  # [limits] cpus: a CPU quota in cores (none: all cores but the host's headroom)
    instructions: Path | None = None
    dockerfile: Path | None = None
    extra: dict = field(default_factory=dict)


LIMIT_KEYS = {"memory_gb", "pids", "disk_gb", "cpus"}


def load_spec(name_or_path: str | Path = "embed") -> TaskSpec:
    root = task_dir(name_or_path)
    try:
        with open(root / "task.toml", "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{root / 'task.toml'} is not valid TOML: {exc}; fix that line") from None
    try:
        model = raw["base_model"]
        dev = raw["dev"]
        pool = raw["pool"]
    except KeyError as exc:
        raise ValueError(f"{root / 'task.toml'}: missing section [{exc.args[0]}]") from None
    ev = raw.get("eval", {})
    limits = raw.get("limits", {})
    unknown = sorted(set(limits) - LIMIT_KEYS)
    if unknown:
        raise ValueError(f"{root / 'task.toml'}: [limits] has no setting {', '.join(unknown)}; "
                         f"the settings are {', '.join(sorted(LIMIT_KEYS))}")
    return TaskSpec(
        name=raw.get("name", root.name),
        root=root,
        base_model=model["id"],
        base_model_sha256=model.get("sha256"),
        hours=float(raw.get("budget", {}).get("hours", 2.0)),
        max_usd=_optional(raw.get("budget", {}).get("usd"), float),
        max_tokens=_optional(raw.get("budget", {}).get("tokens"), int),
        call_timeout_s=float(raw.get("budget", {}).get("call_timeout_s", 600.0)),
        dev_dir=(root / dev["data"]).resolve(),
        dev_tasks=tuple(dev["tasks"]),
        pool_path=(root / pool["path"]).resolve(),
        main_metric=ev.get("main_metric", MAIN_METRIC),
        fast_queries=int(ev.get("fast_queries", 200)),
        fast_docs=int(ev.get("fast_docs", 1000)),
        max_seq_length=int(ev.get("max_seq_length", 256)),
        memory_gb=_positive(limits, "memory_gb", float, root),
        pids=_positive(limits, "pids", int, root),
        disk_gb=_positive(limits, "disk_gb", float, root),
        cpus=_positive(limits, "cpus", float, root),
        instructions=(root / "instructions.md") if (root / "instructions.md").exists() else None,
        dockerfile=(root / "environment" / "Dockerfile") if (root / "environment" / "Dockerfile").exists() else None,
        extra={k: v for k, v in raw.items() if k not in {"name", "base_model", "dev", "pool", "eval", "budget", "limits"}},
    )


def _optional(value, kind):
    return None if value is None else kind(value)


def _positive(section: dict, key: str, kind, root: Path):
    if key not in section:
        return None
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{root / 'task.toml'}: [limits] {key} must be a positive number, got {value!r}")
    return kind(value)
