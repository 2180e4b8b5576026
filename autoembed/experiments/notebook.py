"""What `import autoembed.run` offers a notebook beyond run(): loop(), compare(), load() and the frames.

    import autoembed.run as ae
    trial = ae.run("recipe", hours=0.05)            # one trial (autoembed/trial/run.py); shows as a table
    lp = ae.loop(hours=1, trial_hours=0.05)         # the meta-loop, the same options as `autoembed loop`
    lp.plot(); ae.ledger_df(lp.run_dir)
    ae.load("traces/loops/<run-id>")                # any trial, loop or comparison folder, reopened

loop() and compare() take the command line's options as keyword arguments (trial_hours for --trial-hours,
fast=True/False for --fast/--full, gpus=[0, 1] or "0,1") and build the same typed config the command line builds
(autoembed.loop.config.new_loop, autoembed.experiments.config.make_config), so a notebook run and a command-line
run are the same run. Long work shows a progress bar (tqdm.auto: a widget in Jupyter, text in a terminal).
"""

from __future__ import annotations

from pathlib import Path

from autoembed.experiments.frames import kind, ledger_df, scores_df, trials_df  # noqa: F401 - re-exported for autoembed.run
from autoembed.progress import Bar
from autoembed.experiments.results import LoopView, NotebookTrial, TrialView

__all__ = ["run", "loop", "compare", "load", "trials_df", "ledger_df", "scores_df"]


def run(agent: str, **options) -> NotebookTrial:
    """One trial (autoembed.trial.run.run's arguments); the result shows as a table and has .plot()."""
    from autoembed.trial import run as trial

    result = trial.run(agent, **options)
    return NotebookTrial(result.run_id, result.run_dir, result.meta, result.score)


def loop(*, progress: bool = True, trial_runner=None, smoke=None, resume=None, out=None, **options) -> LoopView:
    """Run (or with resume=<folder>, continue) a meta-loop; the options are LoopConfig's fields, as `autoembed loop`
    names them (trial_hours for --trial-hours, fast=True/False, gpus=[0, 1] or "0,1"). Returns the loop's folder as
    a LoopView (its exit status in .exit_code). trial_runner / smoke replace the real trial and smoke check (tests
    and simulations; see autoembed.loop.engine.Loop)."""
    from autoembed.loop.config import new_loop, resume_loop
    from autoembed.loop.engine import LoopHooks, run_loop

    run_dir, config = resume_loop(resume, options) if resume else new_loop(options, out)
    bar = Bar(config.hours * 3600, f"loop {Path(run_dir).name}") if progress else None
    try:
        code = run_loop(run_dir, config, say=bar, hooks=LoopHooks(trial_runner=trial_runner, smoke=smoke),
                        report_out=lambda text: None)
    finally:
        if bar:
            bar.close()
    return LoopView(run_dir, code)


def compare(**options):
    """A pairing experiment: the grid of meta-loops, meta model x task model, with repeats; see autoembed.experiments.compare."""
    from autoembed.experiments.compare import compare as run_compare

    return run_compare(**options)


def load(path: str | Path):
    """A trial, loop or comparison folder, reopened: TrialView, LoopView or Comparison."""
    path = Path(path)
    found = kind(path)
    if found == "comparison":
        from autoembed.experiments.compare import Comparison

        return Comparison(path)
    return LoopView(path) if found == "loop" else TrialView(path)
