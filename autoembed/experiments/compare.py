"""Pairing experiments: does a meta-agent improve a task agent of its own model family more than one of another
family ("model empathy")? The grid of meta-loops, meta model x task model, each repeated, plus single-agent
trials for a leaderboard; then a report derived from the records (autoembed/experiments/report.py).

    autoembed compare --meta anthropic:claude-opus-4-5,openai:gpt-5 \\
        --task anthropic:claude-sonnet-4-6,openai:gpt-5-mini --hours 2 --repeats 5 --gpus 0
    autoembed compare --resume traces/compare/<run-id>       # after a kill: finished cells are kept
    autoembed compare ... --places places.toml               # trials on Docker engines, Slurm, local GPUs
    autoembed.experiments.compare(meta=[...], task=[...], hours=2, repeats=5)   # the same from a notebook

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

import os
import secrets
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from autoembed.experiments.config import CompareConfig, load_config, make_config, new_id
from autoembed.paths import traces_dir
from autoembed.records import read_json, write_json_atomic

INTERRUPTED = 130


@dataclass
class GridRun:
    """How this process runs the grid (not the comparison's options, which compare.json keeps): a progress bar,
    where messages go, and stand-ins for every cell's loop (trial_runner, smoke: tests, simulations, or a runner
    that places trials elsewhere); cell_reports=False skips each cell's own loop report (its progress.png;
    `autoembed report <cell>` writes it later)."""

    progress: bool = True
    trial_runner: Callable | None = None
    smoke: Callable | None = None
    say: Callable[[str], None] | None = None
    cell_reports: bool = True


# -- running the grid -----------------------------------------------------------------------------


def compare(*, meta=None, task=None, hours: float | None = None, repeats: int | None = None, out=None, resume=None,
            **options):
    """Run (or resume) a comparison and write its report; returns a Comparison. meta / task: lists (or
    comma-separated strings) of meta-agents and task models; the other options are `autoembed compare`'s
    (trial_hours, target, bench for the benchmark task, fast, sandbox, gpus, places (a TOML file of places),
    max_iterations, baseline_runs, max_cost, seed, agents, agent_hours) and GridRun's (progress, trial_runner,
    smoke, say, cell_reports)."""
    run = GridRun(**{k: options.pop(k) for k in [f.name for f in fields(GridRun)] if k in options})
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
        run_dir = Path(out) if out else traces_dir() / "compare" / new_id(config)
        existing = run_dir / "compare.json"
        if existing.is_file():
            saved = load_config(run_dir)
            if asdict(saved) != asdict(config):
                raise ValueError(f"{run_dir} holds a comparison with other options; resume it with --resume {run_dir} "
                                 "or give a new --out")
    code = run_grid(run_dir, config, run)
    from autoembed.experiments.report import write_report

    if code != INTERRUPTED:
        write_report(run_dir)
    result = Comparison(run_dir)
    result.exit_code = code
    return result


def check_agents(config: CompareConfig) -> None:
    """The leaderboard's single-agent trials run after every cell: a bad agent, model or key is found now, not
    hours later (PreflightError, a ValueError: one error line, exit 2)."""
    from autoembed.trial.preflight import preflight

    for spec in config.agents:
        agent, _, model = spec.partition("@")
        preflight(agent, task=config.task, hours=config.agent_hours or config.trial_hours, sandbox=config.sandbox,
                  model=model or None, live_key_check=False)


def run_grid(run_dir: Path, config: CompareConfig, run: GridRun | None = None) -> int:
    """Every cell's loop, then the single-agent trials; 130 when interrupted (resume continues from there)."""
    run = run or GridRun()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "compare.json", {"config": asdict(config), "created": _now()})
    cells, agent_runs = config.cells(), config.agent_runs()
    bar = None
    if run.progress:
        from autoembed.progress import Bar

        bar = Bar(len(cells) + len(agent_runs), f"compare {run_dir.name}", unit="run",
                  echo=run.say)
    tell = bar or run.say or (lambda msg: print(f"[compare] {msg}", file=sys.stderr, flush=True))
    run = replace(run, say=tell)
    try:
        if config.places:
            return run_grid_on_places(run_dir, config, run, step=bar.step if bar else None)
        for cell in cells:
            code = run_cell(run_dir / "cells" / cell["cell"], cell, config, run=run)
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


def run_grid_on_places(run_dir: Path, config: CompareConfig, run: GridRun, *, step=None) -> int:
    """The cells side by side over one shared pool of the places, one cell per share of their slots, then the
    single-agent trials through that pool; 130 when interrupted (Ctrl-C stops every loop between its trials)."""
    from autoembed.placement.config import load_pool

    say = run.say
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
                code = run_cell(run_dir / "cells" / cell["cell"], cell, config, run=run, pool=pool, slots=share,
                                stop=stop)
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


def run_cell(cell_dir: Path, cell: dict, config: CompareConfig, *, run: GridRun, pool=None, slots=None,
             stop=None) -> int:
    """One cell's loop: skipped when done, resumed when begun, started otherwise. Its exit status. pool, slots and
    stop go to the loop (cells side by side over shared places)."""
    from autoembed.loop.config import new_loop, resume_loop
    from autoembed.loop.engine import LoopHooks, run_loop

    say, trial_runner, smoke, report = run.say, run.trial_runner, run.smoke, run.cell_reports
    done = read_json(cell_dir / "done.json", {})
    if done:
        return done["exit_code"]
    if (cell_dir / "config.json").is_file():
        say(f"cell {cell['cell']}: resuming its loop")
        loop_dir, loop_config = resume_loop(cell_dir)
    else:
        say(f"cell {cell['cell']}: meta {cell['meta']} x task model {cell['task_model']}, repeat {cell['repeat']}")
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cell_dir / "cell.json", cell)
        loop_dir, loop_config = new_loop(config.loop_options(cell), cell_dir)
    code = run_loop(loop_dir, loop_config, say=lambda msg: say(f"{cell['cell']}: {msg}"), report_out=lambda text: None,
                    hooks=LoopHooks(trial_runner=trial_runner, smoke=smoke, pool=pool, slots=slots, stop=stop),
                    write_report=report)
    if code != INTERRUPTED:
        write_json_atomic(cell_dir / "done.json", {"exit_code": code, "time": _now()})
    return code


def run_agent_trial(trial_dir: Path, spec: dict, config: CompareConfig, say, pool=None) -> int:
    """One single-agent trial for the leaderboard; one cut off by a kill is kept aside (renamed) and run again."""
    from autoembed.trial.run import run

    meta = read_json(trial_dir / "meta.json", {})
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
        meta = read_json(pool.run_trial({"agent": spec["agent"], **kwargs},
                                        lambda msg: say(f"{spec['id']}: placement: {msg}")) / "meta.json", {})
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
        from autoembed.experiments.report import summarize

        return summarize(self.run_dir)

    def pairings(self):
        """One row per (meta, task model): the improvement on dev and held-out with 95% CIs over repeats."""
        import pandas as pd

        from autoembed.experiments.report import label

        frame = pd.DataFrame(self.summary()["pairings"])
        for column in ("meta", "task_model"):  # a scripted model by its file's name, not its whole path
            frame[column] = frame[column].map(label)
        return frame

    def leaderboard(self):
        import pandas as pd

        return pd.DataFrame(self.summary()["leaderboard"]["rows"])

    @property
    def df(self):
        from autoembed.experiments.frames import ledger_df

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
        from autoembed.experiments.report import improvement_figure

        return improvement_figure(self.summary(), ax=ax)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
