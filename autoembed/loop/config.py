"""What a loop is asked to do, typed: LoopConfig, and the one way to make one for a new run folder or a resumed
one. The command line, the notebook and `autoembed compare` all build a LoopConfig and call new_loop / resume_loop;
argparse lives only in autoembed/commands/loop.py."""

from __future__ import annotations

import math
import os
import secrets
import sys
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from autoembed.models import PROVIDERS, SEARCH, WIRE_KEYS, ModelRef, ModelRefError
from autoembed.paths import REPO_ROOT, traces_dir
from autoembed.records import read_json

DEFAULT_TASK_MODEL = "anthropic:claude-sonnet-4-6"
# A/A runs on a CPU: two. With one, a baseline run that ran slow (a loaded CPU) biases every comparison and shows
# no spread: the gate kept 13-51% of no-better candidates when it ran low by 0.01-0.02, 2.6-3.3% with two
# (tests/test_gate_noise.py); the incumbent's periodic re-measurement adds repeats as the loop goes.
CPU_BASELINE_RUNS = 2
# a screen shorter than this trains for almost nothing: a trial spends ~5-20 s starting (sandbox, torch, the model)
# and the recipe keeps 15 s back to save; at 36 s one screen in five gave up with no model (H100, 2026-12-06)
MIN_SCREEN_S = 60.0
META_TOKEN_ENV = "AUTOEMBED_META_TOKEN"  # the gateway's token for the meta-agent (never written to config.json)
PROVIDER_KEYS = tuple(var for keys in WIRE_KEYS.values() for var, how in keys if how == "api_key")


@dataclass(frozen=True)
class Target:
    name: str
    baseline: Path
    filename: str

    @property
    def uses_task_model(self) -> bool:
        """Its trials call a task model through their gateway (and so spend against --max-cost)."""
        return self.name == "harness"

    def adapter_sha256(self) -> str:
        if self.name == "recipe":
            from autoembed.agents.recipe import FIXED_ADAPTER_SHA256
        else:
            from autoembed.agents.harness import FIXED_ADAPTER_SHA256
        return FIXED_ADAPTER_SHA256

    def agent_spec(self, path: Path) -> str:
        return f"{self.name}:{path}"


TARGETS = {"recipe": Target("recipe", REPO_ROOT / "harnesses" / "recipe.py", "recipe.py"),
           "harness": Target("harness", REPO_ROOT / "harnesses" / "baseline.py", "harness.py")}


@dataclass
class LoopConfig:
    target: str = "recipe"
    meta: str = "search"
    task_model: str | None = None
    task: str = "embed"
    hours: float = 1.0
    trial_hours: float = 0.05
    max_cost: float | None = None
    max_iterations: int | None = None
    gpus: list[str] = field(default_factory=list)
    places: str | None = None  # a TOML file of places (autoembed.placement.config): candidates fill all their slots
    sandbox: str = "auto"
    fast: bool | None = None
    baseline_runs: int = 3  # A/A runs of the baseline at the start: the first estimate of run-to-run noise
    # (3, not 2: with 2 the gate keeps ~81% of true +0.01 improvements in tests/test_gate.py's simulation, with 3 ~89%)
    remeasure_every: int = 6  # trials between re-measurements of the incumbent
    seed: int = 0
    meta_base_url: str | None = None  # a gateway of the user's own for the LLM meta-agent (token from META_TOKEN_ENV);
    # without it the loop starts its own (autoembed.loop.meta.gateway)
    prefetch: bool = True  # on GPUs, propose and smoke-check the next candidates while any trial runs, re-parenting
    # them if that trial is kept; False: only while the incumbent cannot change (A/A, re-measurement), which costs a
    # proposal and a smoke check between trials (bench/bench_loop.py --simulate compares the two)
    screen: float = 0.0  # the search's candidates first run a screen of this share of --trial-hours (0: off)


def field_names() -> set[str]:
    return {f.name for f in fields(LoopConfig)}


def new_loop(options: dict, out: str | Path | None = None) -> tuple[Path, LoopConfig]:
    """A new loop: its run folder (out, or traces/loops/<stamp>-<target>-<meta>-<hex>) and its config, the defaults
    that depend on the machine filled in and everything checked (ValueError naming the fix)."""
    given = _given(options)
    config = LoopConfig(**given)
    if "meta" not in given and any(os.environ.get(k) for k in PROVIDER_KEYS):
        print("[loop] a provider key is set, but the meta-agent is the search (no LLM spends money unless asked): "
              "pass --meta provider:model for an LLM meta-agent", file=sys.stderr)
    if "baseline_runs" not in given and not config.gpus:
        config.baseline_runs = CPU_BASELINE_RUNS
    if config.target == "harness" and not config.task_model:
        config.task_model = DEFAULT_TASK_MODEL
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    meta = config.meta if config.meta == SEARCH else _provider_or_text(config.meta)
    meta = "".join(c if c.isalnum() else "-" for c in meta)
    run_dir = Path(out) if out else traces_dir() / "loops" / f"{stamp}-{config.target}-{meta}-{secrets.token_hex(3)}"
    validate(config)
    return run_dir, config


def resume_loop(run_dir: str | Path, options: dict | None = None) -> tuple[Path, LoopConfig]:
    """The saved config of the loop in run_dir, with these options overriding (a run keeps its target and meta)."""
    run_dir = Path(run_dir)
    given = _given(options or {})
    if given.get("task") == "embed":
        given.pop("task")
    saved = read_json(run_dir / "config.json")
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {run_dir}: no config.json there; give a folder under traces/loops/")
    for fixed in ("target", "meta"):
        if fixed in given and given[fixed] != saved.get(fixed):
            raise ValueError(f"--resume: --{fixed} {given[fixed]} differs from the run's {saved.get(fixed)}; a run keeps its {fixed}")
    config = LoopConfig(**{**saved, **given})
    validate(config)
    return run_dir, config


def _given(options: dict) -> dict:
    unknown = set(options) - field_names()
    if unknown:
        raise ValueError(f"unknown loop option(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(field_names()))}")
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(given.get("gpus"), (str, int)):
        given["gpus"] = [g.strip() for g in str(given["gpus"]).split(",") if g.strip()]
    elif "gpus" in given:
        given["gpus"] = [str(g) for g in given["gpus"]]
    return given


def _provider_or_text(meta: str) -> str:
    """The provider of a meta model for the run folder's name; an unparsable one as it is (validate names it)."""
    try:
        return ModelRef.parse(meta).provider
    except ModelRefError:
        return meta


def validate(config: LoopConfig) -> None:
    if config.target not in TARGETS:
        raise ValueError(f"--target {config.target!r}: use one of {', '.join(sorted(TARGETS))}")
    if config.hours <= 0 or config.trial_hours <= 0:
        raise ValueError("--hours and --trial-hours must be positive")
    if config.trial_hours > config.hours:
        raise ValueError(f"--trial-hours {config.trial_hours:g} is more than the loop's --hours {config.hours:g}: no trial fits")
    if config.target == "harness" and not str(config.task_model or "").startswith("scripted:"):  # a script answers at once
        from autoembed.agents.base import MIN_BUDGET_S, too_short

        short = too_short("each harness trial", config.trial_hours * 3600, MIN_BUDGET_S["harness"], "--trial-hours")
        if short:
            raise ValueError(short)
    if not 0 <= config.screen < 1:
        raise ValueError(f"--screen {config.screen:g}: give a share of --trial-hours from 0 (off) to below 1, e.g. 0.25")
    screen_s = config.screen * config.trial_hours * 3600
    if 0 < round(screen_s, 1) < MIN_SCREEN_S:  # rounded: --trial-hours 0.0333333 is two minutes, and half of it one
        least = math.ceil(round(100 * MIN_SCREEN_S / (config.trial_hours * 3600), 3)) / 100
        fix = f"use --screen {least:g} or more" if least < 1 else "screen only trials of more than a minute"
        raise ValueError(f"--screen {config.screen:g} of --trial-hours {config.trial_hours:g} gives each screen "
                         f"{screen_s:.0f} s: a screen needs at least {MIN_SCREEN_S:.0f} s to train between the trial's "
                         f"start and the recipe's save; {fix}, or a longer --trial-hours")
    if config.baseline_runs < 1:
        raise ValueError("--baseline-runs must be at least 1")
    if config.meta != SEARCH:
        try:
            ModelRef.parse(config.meta)  # a clear error for a malformed provider:model now, not mid-run
        except ModelRefError:
            raise ValueError(f"--meta {config.meta!r}: use {SEARCH} (the offline knob search, no model) or "
                             f"provider:model, the provider one of {', '.join(sorted(PROVIDERS))}") from None
    if config.places:
        from autoembed.placement.config import load_places

        load_places(Path(config.places))  # a clear error for a bad places file now, not when the first trial starts
        if config.gpus:
            raise ValueError("--places and --gpus both say where trials run: list this machine's GPUs as a local place")
    if len(set(config.gpus)) != len(config.gpus):
        raise ValueError(f"--gpus lists a GPU twice: {','.join(config.gpus)}")
