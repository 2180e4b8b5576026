"""What a comparison is asked to do, typed: CompareConfig (saved in compare.json), its cells, and the one way to
make one from compare()'s keyword arguments, checked before any cell starts. compare.py runs it; report.py reads
it back; neither imports the other for it."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from autoembed.models import SEARCH, ModelRef


@dataclass
class CompareConfig:
    metas: list[str]
    task_models: list[str]
    hours: float  # each cell's loop budget
    repeats: int = 3
    trial_hours: float = 0.05
    target: str = "harness"
    task: str = "embed"
    fast: bool | None = None
    sandbox: str = "auto"
    gpus: list[str] = field(default_factory=list)
    places: str | None = None  # a TOML file of places (autoembed.placement.config), its absolute path
    max_iterations: int | None = None
    baseline_runs: int | None = None
    max_cost: float | None = None  # per cell
    seed: int = 0
    agents: list[str] = field(default_factory=list)  # single-agent trials: "agent" or "agent@model"
    agent_hours: float | None = None

    def cells(self) -> list[dict]:
        return [{"cell": cell_id(meta, task_model, r), "meta": meta, "task_model": task_model, "repeat": r}
                for r in range(self.repeats) for meta in self.metas for task_model in self.task_models]

    def agent_runs(self) -> list[dict]:
        runs = []
        for r in range(self.repeats):
            for spec in self.agents:
                agent, _, model = spec.partition("@")
                runs.append({"id": f"{_slug(spec)}-r{r}", "agent": agent, "model": model or None, "repeat": r})
        return runs

    def loop_options(self, cell: dict) -> dict:
        """The options of one cell's loop (autoembed.loop.config.new_loop); repeat r is seeded with seed + r."""
        return {"hours": self.hours, "trial_hours": self.trial_hours, "target": self.target, "meta": cell["meta"],
                "task_model": cell["task_model"], "task": self.task, "fast": self.fast, "sandbox": self.sandbox,
                "gpus": self.gpus or None, "places": self.places, "max_iterations": self.max_iterations,
                "baseline_runs": self.baseline_runs, "max_cost": self.max_cost, "seed": self.seed + cell["repeat"]}


def cell_id(meta: str, task_model: str, repeat: int) -> str:
    return f"{_slug(meta)}__{_slug(task_model)}__r{repeat}"


def _slug(text: str) -> str:
    name = text.split("/")[-1] if text.startswith("scripted:") else text
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in name)[:60]


def make_config(meta, task, hours, repeats, options: dict) -> CompareConfig:
    metas, task_models = _names(meta, "--meta"), _names(task, "--task")
    if hours is None or not hours > 0:
        raise ValueError("--hours (each cell's loop budget) must be given and positive")
    if repeats < 1:
        raise ValueError("--repeats must be at least 1")
    bench = options.pop("bench", None)
    gpus = options.pop("gpus", None)
    agents = options.pop("agents", None)
    places = options.pop("places", None)
    unknown = set(options) - {f.name for f in fields(CompareConfig)}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    config = CompareConfig(metas=metas, task_models=task_models, hours=float(hours), repeats=int(repeats),
                           task=bench or "embed", gpus=_names(gpus, "--gpus") if gpus else [],
                           agents=_names(agents, "--agents") if agents else [],
                           places=_places_file(places, gpus) if places else None,
                           **{k: v for k, v in options.items() if v is not None})
    if config.target != "harness":
        raise ValueError("--target: a pairing needs a task model, which only the harness target has")
    if config.trial_hours > config.hours:
        raise ValueError(f"--trial-hours {config.trial_hours:g} is more than a cell's --hours {config.hours:g}")
    for name in (*metas, *task_models):
        if name != SEARCH:
            ModelRef.parse(name)
    if SEARCH in task_models:
        raise ValueError("--task: 'search' is a meta-agent, not a task model")
    return config


def _places_file(places, gpus) -> str:
    """The places file's absolute path (a resume from another folder finds it), checked now: a bad file is one
    error line before any cell starts."""
    from autoembed.placement.config import load_places

    if gpus:
        raise ValueError("--places and --gpus both say where trials run: list this machine's GPUs as a local place")
    path = Path(places).resolve()
    load_places(path)
    return str(path)


def _names(value, flag: str) -> list[str]:
    names = [str(v).strip() for v in (value.split(",") if isinstance(value, str) else value or []) if str(v).strip()]
    if not names:
        raise ValueError(f"{flag} needs at least one name (comma-separated)")
    if len(set(names)) != len(names):
        raise ValueError(f"{flag} lists a name twice: {','.join(names)}")
    return names


def load_config(run_dir: Path) -> CompareConfig:
    path = Path(run_dir) / "compare.json"
    if not path.is_file():
        raise ValueError(f"--resume {run_dir}: no compare.json there; give a folder under traces/compare/")
    return CompareConfig(**json.loads(path.read_text())["config"])


def new_id(config: CompareConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{len(config.metas)}x{len(config.task_models)}x{config.repeats}-{secrets.token_hex(3)}"
