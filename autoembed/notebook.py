"""What `import autoembed.run` offers a notebook beyond run(): loop(), compare(), load() and the frames.

    import autoembed.run as ae
    trial = ae.run("recipe", hours=0.05)            # one trial (autoembed/run.py); shows as a table
    lp = ae.loop(hours=1, trial_hours=0.05)         # the meta-loop, the same options as `autoembed loop`
    lp.plot(); ae.ledger_df(lp.run_dir)
    ae.load("traces/loops/<run-id>")                # any trial, loop or comparison folder, reopened

loop() and compare() take the command line's options as keyword arguments (trial_hours for --trial-hours,
fast=True/False for --fast/--full, gpus=[0, 1] or "0,1") and go through the command's own parser and entry
point, so a notebook run and a command-line run are the same run. Long work shows a progress bar (tqdm.auto:
a widget in Jupyter, text in a terminal).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoembed.frames import kind, ledger_df, scores_df, trials_df  # noqa: F401 - re-exported for autoembed.run
from autoembed.progress import Bar
from autoembed.results import LoopView, TrialView

__all__ = ["loop", "compare", "load", "trials_df", "ledger_df", "scores_df"]


class _Parser(argparse.ArgumentParser):
    """A bad option is a ValueError naming it, not a SystemExit that ends the kernel's cell without a word."""

    def error(self, message: str):
        raise ValueError(f"{self.prog}: {message}")


def argv_from_options(options: dict) -> list[str]:
    """Keyword arguments as the command line would spell them: trial_hours=0.1 -> --trial-hours 0.1;
    fast=True -> --fast, fast=False -> --full; lists -> comma-separated; None is left out."""
    argv: list[str] = []
    for name, value in options.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "fast":
            argv.append("--fast" if value else "--full")
        elif isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_options(add_arguments, prog: str, options: dict) -> argparse.Namespace:
    parser = _Parser(prog=prog)
    add_arguments(parser)
    return parser.parse_args(argv_from_options(options))


def loop(*, progress: bool = True, trial_runner=None, smoke=None, **options) -> LoopView:
    """Run (or with resume=<folder>, continue) a meta-loop; the options are `autoembed loop`'s.
    Returns the loop's folder as a LoopView (its exit status in .exit_code). trial_runner / smoke replace the
    real trial and smoke check (tests and simulations; see autoembed.loop.Loop)."""
    from autoembed.loop import add_arguments, config_from_args, run_loop

    args = parse_options(add_arguments, "autoembed loop", options)
    run_dir, config = config_from_args(args)
    bar = Bar(config.hours * 3600, f"loop {Path(run_dir).name}") if progress else None
    try:
        code = run_loop(run_dir, config, say=bar, trial_runner=trial_runner, smoke=smoke, report_out=lambda text: None)
    finally:
        if bar:
            bar.close()
    return LoopView(run_dir, code)


def compare(**options):
    """A pairing experiment: the grid of meta-loops, meta model x task model, with repeats; see autoembed.compare."""
    from autoembed.compare import compare as run_compare

    return run_compare(**options)


def load(path: str | Path):
    """A trial, loop or comparison folder, reopened: TrialView, LoopView or Comparison."""
    path = Path(path)
    found = kind(path)
    if found == "comparison":
        from autoembed.compare import Comparison

        return Comparison(path)
    return LoopView(path) if found == "loop" else TrialView(path)
