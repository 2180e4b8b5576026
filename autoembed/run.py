"""The notebook's one import: a trial, a loop, a comparison, any folder reopened, and their frames.

    import autoembed.run as ae
    trial = ae.run("recipe", hours=0.05)      # one trial; shows as a table, trial.plot() for its changes
    lp = ae.loop(hours=1, trial_hours=0.05)   # the meta-loop, `autoembed loop`'s options as keywords
    ae.load("traces/loops/<run-id>"); ae.ledger_df(lp.run_dir)

The top floor, beside the command line: it imports the experiments, the loop and the trial, and nothing imports it.
"""

from autoembed.experiments.notebook import compare, ledger_df, load, loop, run, scores_df, trials_df  # noqa: F401
from autoembed.trial.run import TrialFailedToStart, TrialResult  # noqa: F401

__all__ = ["run", "loop", "compare", "load", "trials_df", "ledger_df", "scores_df", "TrialResult", "TrialFailedToStart"]
