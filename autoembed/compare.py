"""Pairing experiments: does a meta-agent improve a task agent of its own model family more than one of another
family ("model empathy")? The grid of meta-loops, meta model x task model, each repeated, plus single-agent
trials for a leaderboard; then a report derived from the records (autoembed/compare_report.py).

    autoembed compare --meta anthropic:claude-opus-4-5,openai:gpt-5 \\
        --task anthropic:claude-sonnet-4-6,openai:gpt-5-mini --hours 2 --repeats 5 --gpus 0
    autoembed compare --resume traces/compare/<run-id>       # after a kill: finished cells are kept
    autoembed compare ... --places places.toml               # trials on Docker engines, Slurm, local GPUs
    autoembed.compare(meta=[...], task=[...], hours=2, repeats=5)   # the same from a notebook

The folder traces/compare/<run-id>/ holds compare.json (the grid's options), cells/<cell>/ (one loop run folder
each, with cell.json naming its meta model, task model and repeat, and done.json once its loop ended), agents/
(the single-agent trials) and report/ (report.md, report.json, PNG figures). Every cell is a whole loop through
autoembed.loop.run_loop, the command line's own path; a killed comparison resumes each unfinished loop from its
own records (the loop's write-ahead intents), and runs the cells not started yet.

Cells run in repeat-major order (every pairing once, then every pairing again), so a comparison stopped early
still has balanced repeats. Repeat r seeds every cell's loop with seed + r.

With places (a TOML file, autoembed/placement/config.py), the grid fills every slot of every place: as many cells
run side by side as the places have slots (never more than there are cells), each cell's loop planning its
parallel candidates over its share of the slots, and all of them sharing ONE pool of places (autoembed.placement
.Pool), so that no more trials run at once than there are slots whatever each loop plans. A trial whose place
fails is run again on another, and each trial's meta.json (and its ledger row) says where it ran. Cells still
start in repeat-major order, and a kill leaves each running cell to resume from its own records. The
leaderboard's single-agent trials then go through the same pool, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from autoembed.paths import traces_dir

INTERRUPTED = 130


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


def cell_id(meta: str, task_model: str, repeat: int) -> str:
    return f"{_slug(meta)}__{_slug(task_model)}__r{repeat}"


def _slug(text: str) -> str:
    name = text.split("/")[-1] if text.startswith("scripted:") else text
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in name)[:60]


# -- running the grid -----------------------------------------------------------------------------


def compare(*, meta=None, task=None, hours: float | None = None, repeats: int | None = None, out=None, resume=None,
            progress: bool = True, trial_runner=None, smoke=None, say=None, cell_reports: bool = True, **options):
    """Run (or resume) a comparison and write its report; returns a Comparison. meta / task: lists (or
    comma-separated strings) of meta-agents and task models; the other options are `autoembed compare`'s
    (trial_hours, target, bench for the benchmark task, fast, sandbox, gpus, places (a TOML file of places),
    max_iterations, baseline_runs, max_cost, seed, agents, agent_hours). trial_runner / smoke go to every cell's Loop (tests, simulations,
    or a runner that places trials elsewhere); cell_reports=False skips each cell's own loop report (its
    progress.png; `autoembed report <cell>` writes it later)."""
    if resume:
        run_dir = Path(resume)
        config = load_config(run_dir)
        if repeats is not None:  # more repeats of the same grid, e.g. after the report said how many an effect needs
            if repeats < config.repeats:
                raise ValueError(f"--repeats {repeats} is fewer than the comparison's {config.repeats}; a resume only adds")
            config.repeats = repeats
    else:
        config = make_config(meta, task, hours, 3 if repeats is None else repeats, options)
        check_agents(config)
        run_dir = Path(out) if out else traces_dir() / "compare" / _new_id(config)
        existing = run_dir / "compare.json"
        if existing.is_file():
            saved = load_config(run_dir)
            if asdict(saved) != asdict(config):
                raise ValueError(f"{run_dir} holds a comparison with other options; resume it with --resume {run_dir} "
                                 "or give a new --out")
    code = run_grid(run_dir, config, progress=progress, trial_runner=trial_runner, smoke=smoke, say=say,
                    cell_reports=cell_reports)
    from autoembed.compare_report import write_report

    if code != INTERRUPTED:
        write_report(run_dir)
    result = Comparison(run_dir)
    result.exit_code = code
    return result


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
    unknown = set(options) - {f.name for f in CompareConfig.__dataclass_fields__.values()}
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
        if name != "search":
            from autoembed.llm.registry import parse_model

            parse_model(name)
    if "search" in task_models:
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


def check_agents(config: CompareConfig) -> None:
    """The leaderboard's single-agent trials run after every cell: a bad agent, model or key is found now, not
    hours later (PreflightError, a ValueError: one error line, exit 2)."""
    from autoembed.preflight import preflight

    for spec in config.agents:
        agent, _, model = spec.partition("@")
        preflight(agent, task=config.task, hours=config.agent_hours or config.trial_hours, sandbox=config.sandbox,
                  model=model or None, live_key_check=False)


def _names(value, flag: str) -> list[str]:
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or []) if str(v).strip()]
    names = [str(n) for n in names]
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


def _new_id(config: CompareConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{len(config.metas)}x{len(config.task_models)}x{config.repeats}-{secrets.token_hex(3)}"


def run_grid(run_dir: Path, config: CompareConfig, *, progress: bool = True, trial_runner=None, smoke=None,
             say=None, cell_reports: bool = True) -> int:
    """Every cell's loop, then the single-agent trials; 130 when interrupted (resume continues from there)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "compare.json", {"config": asdict(config), "created": _now()})
    cells, agent_runs = config.cells(), config.agent_runs()
    bar = None
    if progress:
        from autoembed.progress import Bar

        bar = Bar(len(cells) + len(agent_runs), f"compare {run_dir.name}", unit="run",
                  echo=say)
    tell = bar or say or (lambda msg: print(f"[compare] {msg}", file=sys.stderr, flush=True))
    try:
        if config.places:
            return run_grid_on_places(run_dir, config, say=tell, step=bar.step if bar else None,
                                      trial_runner=trial_runner, smoke=smoke, cell_reports=cell_reports)
        for cell in cells:
            code = run_cell(run_dir / "cells" / cell["cell"], cell, config, say=tell, trial_runner=trial_runner, smoke=smoke,
                            report=cell_reports)
            if code == INTERRUPTED:
                return INTERRUPTED
            if bar:
                bar.step()
        for spec in agent_runs:
            if run_agent_trial(run_dir / "agents" / spec["id"], spec, config, tell) == INTERRUPTED:
                return INTERRUPTED
            if bar:
                bar.step()
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        if bar:
            bar.close()
    return 0


def run_grid_on_places(run_dir: Path, config: CompareConfig, *, say, step=None, trial_runner=None, smoke=None,
                       cell_reports: bool = True) -> int:
    """The cells side by side over one shared pool of the places, one cell per share of their slots, then the
    single-agent trials through that pool; 130 when interrupted (Ctrl-C stops every loop between its trials)."""
    from autoembed.placement.config import load_pool

    pool = load_pool(config.places, say)
    cells = config.cells()
    left = deque(c for c in cells if not (run_dir / "cells" / c["cell"] / "done.json").is_file())
    step = step or (lambda n=1: None)
    step(len(cells) - len(left))
    stop, lock = threading.Event(), threading.Lock()
    labels = pool.slot_labels()
    width = max(1, min(len(labels), len(left)))
    running: list[list[str]] = []  # the slot shares of the loops running now (each loop reads its list per batch)

    def cells_on(share: list[str]) -> int:
        while not stop.is_set():
            with lock:
                if not left:  # no cell left to start: this share's slots go to the running loop with the fewest
                    if running:
                        min(running, key=len).extend(share)
                    return 0
                cell = left.popleft()
                running.append(share)
            try:
                code = run_cell(run_dir / "cells" / cell["cell"], cell, config, say=say, trial_runner=trial_runner,
                                smoke=smoke, report=cell_reports, pool=pool, slots=share, stop=stop)
            finally:
                with lock:
                    running.remove(share)
            if code == INTERRUPTED:
                stop.set()
                return INTERRUPTED
            with lock:
                step()
        return INTERRUPTED

    if _side_by_side(stop, [lambda share=labels[i::width]: cells_on(share) for i in range(width)]):
        return INTERRUPTED
    agent_runs = config.agent_runs()
    trials = [lambda spec=spec: INTERRUPTED if stop.is_set() else  # a Ctrl-C: the trials not begun wait for a resume
              run_agent_trial(run_dir / "agents" / spec["id"], spec, config, say, pool=pool) for spec in agent_runs]
    interrupted = _side_by_side(stop, trials, width=max(1, min(pool.size, len(trials))))
    step(len(agent_runs))
    return INTERRUPTED if interrupted else 0


def _side_by_side(stop: threading.Event, work: list, width: int | None = None) -> bool:
    """Run the callables in threads; True when one was interrupted (returned 130) or Ctrl-C came, after every
    thread ended (stop is set at once, so each loop ends between its trials)."""
    if not work:
        return False
    executor = ThreadPoolExecutor(width or len(work), thread_name_prefix="compare")
    futures = [executor.submit(fn) for fn in work]
    interrupted, running = False, set(futures)
    try:
        while running:
            try:
                done, running = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                stop.set()
                interrupted = True
                continue
            if any(f.exception() or f.result() == INTERRUPTED for f in done):
                stop.set()  # the others end between their trials; a resume continues them all
    except BaseException:  # a Ctrl-C outside the wait: the loops still stop between their trials
        stop.set()
        raise
    finally:
        executor.shutdown(wait=True)
    for f in futures:
        if f.exception():
            raise f.exception()
    return interrupted or any(f.result() == INTERRUPTED for f in futures)


def run_cell(cell_dir: Path, cell: dict, config: CompareConfig, *, say, trial_runner=None, smoke=None,
             report: bool = True, pool=None, slots=None, stop=None) -> int:
    """One cell's loop: skipped when done, resumed when begun, started otherwise. Its exit status. pool, slots and
    stop go to the loop (cells side by side over shared places)."""
    from autoembed.loop import add_arguments, config_from_args, run_loop
    from autoembed.notebook import parse_options

    done = _read_json(cell_dir / "done.json")
    if done:
        return done["exit_code"]
    if (cell_dir / "config.json").is_file():
        say(f"cell {cell['cell']}: resuming its loop")
        options = {"resume": str(cell_dir)}
    else:
        say(f"cell {cell['cell']}: meta {cell['meta']} x task model {cell['task_model']}, repeat {cell['repeat']}")
        cell_dir.mkdir(parents=True, exist_ok=True)
        _write_json(cell_dir / "cell.json", cell)
        options = {"out": str(cell_dir), "hours": config.hours, "trial_hours": config.trial_hours,
                   "target": config.target, "meta": cell["meta"], "task_model": cell["task_model"], "task": config.task,
                   "fast": config.fast, "sandbox": config.sandbox, "gpus": config.gpus or None, "places": config.places,
                   "max_iterations": config.max_iterations, "baseline_runs": config.baseline_runs,
                   "max_cost": config.max_cost, "seed": config.seed + cell["repeat"]}
    args = parse_options(add_arguments, "autoembed loop", options)
    loop_dir, loop_config = config_from_args(args)
    code = run_loop(loop_dir, loop_config, say=lambda msg: say(f"{cell['cell']}: {msg}"), trial_runner=trial_runner,
                    smoke=smoke, report_out=lambda text: None, write_report=report, pool=pool, slots=slots, stop=stop)
    if code != INTERRUPTED:
        _write_json(cell_dir / "done.json", {"exit_code": code, "time": _now()})
    return code


def run_agent_trial(trial_dir: Path, spec: dict, config: CompareConfig, say, pool=None) -> int:
    """One single-agent trial for the leaderboard; one cut off by a kill is kept aside (renamed) and run again."""
    from autoembed.run import run

    meta = _read_json(trial_dir / "meta.json")
    if meta.get("ended"):
        return 0
    if trial_dir.exists():
        aside = trial_dir.with_name(f"{trial_dir.name}.cut-off-{secrets.token_hex(2)}")
        say(f"{spec['id']}: the trial was cut off ({meta.get('status', 'no record')}); kept as {aside.name}, running it again")
        os.replace(trial_dir, aside)
    trial_dir.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(task=config.task, hours=config.agent_hours or config.trial_hours, sandbox=config.sandbox,
                  model=spec["model"], out=trial_dir, fast=config.fast)
    if config.places:  # on the first free slot of the places, retried elsewhere if its place fails
        from autoembed.placement.config import load_pool

        pool = pool or load_pool(config.places, lambda msg: say(f"{spec['id']}: {msg}"))
        meta = _read_json(pool.run_trial({"agent": spec["agent"], **kwargs},
                                         lambda msg: say(f"{spec['id']}: placement: {msg}")) / "meta.json")
        return INTERRUPTED if meta.get("exit_reason") == "interrupted" else 0
    result = run(spec["agent"], gpus=config.gpus[:1] or None, progress=lambda msg: say(f"{spec['id']}: {msg}"), **kwargs)
    return INTERRUPTED if result.exit_reason == "interrupted" else 0


# -- reading a comparison back --------------------------------------------------------------------


class Comparison:
    """A comparison folder: its pairing table and figure, for a notebook (load(path) gives one too)."""

    exit_code: int | None = None

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.config = load_config(self.run_dir)

    def summary(self) -> dict:
        from autoembed.compare_report import summarize

        return summarize(self.run_dir)

    def pairings(self):
        """One row per (meta, task model): the improvement on dev and held-out with 95% CIs over repeats."""
        import pandas as pd

        from autoembed.compare_report import label

        frame = pd.DataFrame(self.summary()["pairings"])
        for column in ("meta", "task_model"):  # a scripted model by its file's name, not its whole path
            frame[column] = frame[column].map(label)
        return frame

    def leaderboard(self):
        import pandas as pd

        return pd.DataFrame(self.summary()["leaderboard"]["rows"])

    @property
    def df(self):
        from autoembed.frames import ledger_df

        return ledger_df(self.run_dir)

    def _repr_html_(self) -> str:
        import html

        s = self.summary()
        test = s["empathy"]
        head = (f"<b>comparison {html.escape(self.run_dir.name)}</b>: {len(self.config.metas)} meta x "
                f"{len(self.config.task_models)} task models x {self.config.repeats} repeats; "
                f"{s['cells_done']}/{s['cells_total']} cells done")
        words = html.escape(test.get("words") or "")
        return (f"<div>{head}{self.pairings().to_html(index=False, float_format=lambda v: f'{v:+.4f}', na_rep='–')}"
                f"<p>{words}</p><small>{html.escape(str(self.run_dir))}</small></div>")

    def __repr__(self) -> str:
        return f"Comparison({str(self.run_dir)!r})"

    def plot(self, ax=None):
        from autoembed.compare_report import improvement_figure

        return improvement_figure(self.summary(), ax=ax)


# -- the command line -----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from autoembed.commands.options import add_mode

    p.add_argument("--meta", default=None, help="comma-separated meta-agents: search, or provider:model")
    p.add_argument("--task", default=None, help="comma-separated task models (provider:model) the harness runs with")
    p.add_argument("--hours", type=float, default=None, help="each cell's loop budget in hours")
    p.add_argument("--repeats", type=int, default=None, help="repeats of every pairing (default 3; the report says how "
                                                            "many the effect sizes need; with --resume: raise it to add repeats)")
    p.add_argument("--trial-hours", type=float, default=None, help="each trial's budget (default 0.05)")
    p.add_argument("--max-iterations", type=int, default=None, help="candidates per cell's loop")
    p.add_argument("--baseline-runs", type=int, default=None, help="A/A runs of the baseline harness per cell (default 3)")
    p.add_argument("--max-cost", type=float, default=None, help="dollars per cell's loop (trials + meta-agent)")
    p.add_argument("--agents", default=None, help="single-agent trials for the leaderboard, comma-separated: claude, "
                                                  "codex, gemini, recipe, harness:<file>@provider:model")
    p.add_argument("--agent-hours", type=float, default=None, help="their budget (default --trial-hours)")
    p.add_argument("--gpus", default=None, help="GPU ids for the trials, e.g. 0,1 (default: CPU)")
    p.add_argument("--places", default=None, metavar="TOML",
                   help="run the trials on these places (local GPUs, Docker engines, Slurm), one per slot; see README")
    p.add_argument("--sandbox", default=None, choices=["auto", "docker", "bwrap", "none"])
    p.add_argument("--seed", type=int, default=None, help="repeat r's loops are seeded with seed + r (default 0)")
    p.add_argument("--out", default=None, help="the comparison's folder (default traces/compare/<run-id>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the comparison in DIR")
    add_mode(p, "sets")
    p.add_argument("--bench", default="embed", help="the benchmark task: a name under tasks/ or a folder (default embed)")


def main_from_args(args) -> int:
    if args.resume:
        given = [f for f in ("meta", "task", "hours") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--resume keeps the comparison's own grid; leave out {', '.join('--' + g for g in given)}")
        result = compare(resume=args.resume, repeats=args.repeats)
    else:
        options = {k: getattr(args, k) for k in ("trial_hours", "max_iterations", "baseline_runs", "max_cost", "agents",
                                                 "agent_hours", "gpus", "places", "sandbox", "seed", "fast", "bench")}
        result = compare(meta=args.meta, task=args.task, hours=args.hours, repeats=args.repeats, out=args.out,
                         **{k: v for k, v in options.items() if v is not None})
    if result.exit_code == INTERRUPTED:
        print(f"[compare] interrupted; continue with: autoembed compare --resume {result.run_dir}", file=sys.stderr)
        return INTERRUPTED
    print(f"[compare] report: {result.run_dir / 'report' / 'report.md'}", file=sys.stderr)
    return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
