"""The keep / discard / inconclusive gate: pure statistics over per-query scores, no I/O.

A candidate is compared with the incumbent (the best commit so far) on the same queries. Two sources of
noise make a difference look real when it is not:

- query sampling: the queries are a sample; a paired bootstrap (resampling the same queries for both,
  within each task, the mean over tasks as the statistic) gives the standard error of the difference;
- run-to-run noise: the same file trained twice gives two models (seeds, timing, data order). Its variance
  is the pooled variance of the mean scores of repeated runs of one commit (the A/A baseline runs at the
  start, the incumbent's periodic re-measurements, a candidate's re-runs), shrunk towards a prior.

The variance of the difference of the two means (candidate averaged over n_c runs, incumbent over n_i) is
se_query^2 + run_sd^2 (1/n_c + 1/n_i). Keep when the lower one-sided bound is above zero. Discard when the
difference is not promising (at most promising_z standard errors above zero), so a candidate no better than
the incumbent rarely costs a second trial. Otherwise inconclusive: a re-run, until the candidate has max_runs
runs, and then discard. Each look tests at alpha / max_runs (Bonferroni), so a candidate no better than the
incumbent is kept with probability at most alpha over all its looks.

On a noisy machine the run-to-run sd is estimated from a few repeats, so the bound uses Student's t with the
Welch-Satterthwaite degrees of freedom of that variance (prior and repeats: few, so t is wide, while query
sampling dominates; many, so t is z), and each side's own spread of run means where it exceeds the pooled sd
(a candidate noisier than the others, an incumbent with one run that ran slow). A candidate's own spread is
unknown after one run: a keep on one run stands only if it survives run-to-run noise unknown_sd_factor times the
estimate; otherwise the verdict is inconclusive ("confirm") and the keep needs the runs together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from autoembed.task.resample import bootstrap_replicates

PerQuery = dict[str, dict[str, float]]  # task -> query id -> main-metric value


@dataclass(frozen=True)
class GateConfig:
    alpha: float = 0.05  # the false-keep rate over all the looks at one candidate
    max_runs: int = 3  # runs of one candidate before an inconclusive one is discarded
    n_boot: int = 1000
    prior_run_sd: float = 0.004  # run-to-run sd of the mean score assumed before repeats are measured
    prior_dof: float = 2.0  # how many degrees of freedom that prior weighs
    promising_z: float = 1.0  # an unproven candidate earns a re-run only if it is this many SEs above zero
    unknown_sd_factor: float = 2.0  # a keep on one run must survive run-to-run noise this many times the estimate
    seed: int = 0

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1 - self.alpha / self.max_runs)

    def critical(self, se: float, run_var: float, dof: float) -> float:
        """The one-sided quantile for a standard error se whose run-to-run part run_var has dof degrees of freedom
        (Welch-Satterthwaite: the query part counts as known)."""
        if run_var <= 0 or dof <= 0:
            return self.z
        from scipy.stats import t

        return float(t.ppf(1 - self.alpha / self.max_runs, se**4 * dof / run_var**2))


@dataclass(frozen=True)
class Verdict:
    outcome: str  # keep | discard | inconclusive
    diff: float  # candidate - incumbent, mean over tasks
    ci_low: float
    ci_high: float
    se: float
    se_query: float
    run_sd: float
    runs_candidate: int
    runs_incumbent: int
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def mean_score(per_query: PerQuery) -> float:
    """The headline number: the mean over tasks of each task's mean over queries."""
    return float(np.mean([np.mean(list(scores.values())) for scores in per_query.values()]))


def as_arrays(runs: list[PerQuery], order: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Runs of one commit as task -> array (runs x queries), queries in sorted-id order (or the given one)."""
    if not runs:
        raise ValueError("no runs")
    order = order or {task: sorted(scores) for task, scores in runs[0].items()}
    out = {}
    for task, ids in order.items():
        rows = []
        for run in runs:
            if run.keys() != order.keys() or run[task].keys() != set(ids):
                raise ValueError(f"task {task}: runs were scored on different tasks or different queries")
            rows.append([run[task][q] for q in ids])
        out[task] = np.asarray(rows, dtype=np.float64)
    return out


def paired_bootstrap_se(candidate: dict[str, np.ndarray], incumbent: dict[str, np.ndarray], n_boot: int = 1000,
                        seed: int = 0) -> tuple[float, float]:
    """(difference of the means over tasks, its bootstrap standard error), resampling queries within each
    task; each side is task -> per-query scores (already averaged over runs), aligned."""
    diffs = {t: np.asarray(candidate[t]) - np.asarray(incumbent[t]) for t in candidate}
    replicates = bootstrap_replicates(diffs, n_boot, seed)["mean"]
    point = float(np.mean([d.mean() for d in diffs.values()]))
    return point, float(replicates.std(ddof=1))


def run_sd(groups: list[list[float]], prior_sd: float, prior_dof: float) -> tuple[float, float]:
    """(run-to-run sd, degrees of freedom) from the mean scores of repeated runs, grouped by commit, pooled
    and shrunk towards the prior: sd^2 = (prior_dof prior_sd^2 + SS) / (prior_dof + dof)."""
    ss, dof = 0.0, 0
    for means in groups:
        if len(means) >= 2:
            values = np.asarray(means, dtype=np.float64)
            ss += float(((values - values.mean()) ** 2).sum())
            dof += len(values) - 1
    total_dof = prior_dof + dof
    if total_dof <= 0:
        raise ValueError("no run-to-run noise estimate: give a prior or repeat a commit")
    return math.sqrt((prior_dof * prior_sd**2 + ss) / total_dof), float(dof)


def decide(candidate_runs: list[PerQuery], incumbent_runs: list[PerQuery], noise_sd: float,
           config: GateConfig = GateConfig(), noise_dof: float | None = None) -> Verdict:
    """The verdict on a candidate measured len(candidate_runs) times against the incumbent's runs; noise_dof is
    the run-to-run sd's degrees of freedom, prior included (default: what these two commits' repeats give)."""
    if not candidate_runs or not incumbent_runs:
        raise ValueError("the gate needs at least one run of the candidate and one of the incumbent")
    incumbent = as_arrays(incumbent_runs)
    candidate = as_arrays(candidate_runs, {task: sorted(scores) for task, scores in incumbent_runs[0].items()})
    return decide_arrays(candidate, incumbent, noise_sd, config, noise_dof)


def own_variance(runs: dict[str, np.ndarray]) -> float:
    """The variance of one commit's run means (the mean over tasks of each task's mean), 0 with one run."""
    means = np.mean([a.mean(axis=1) for a in runs.values()], axis=0)
    return float(np.var(means, ddof=1)) if len(means) >= 2 else 0.0


def decide_arrays(candidate: dict[str, np.ndarray], incumbent: dict[str, np.ndarray], noise_sd: float,
                  config: GateConfig = GateConfig(), noise_dof: float | None = None) -> Verdict:
    """decide() on aligned arrays: task -> (runs x queries), the same queries in the same order on both sides."""
    n_c, n_i = len(next(iter(candidate.values()))), len(next(iter(incumbent.values())))
    diff, se_query = paired_bootstrap_se({t: a.mean(axis=0) for t, a in candidate.items()},
                                         {t: a.mean(axis=0) for t, a in incumbent.items()}, config.n_boot, config.seed + n_c)
    pooled = noise_sd**2
    var_c, var_i = max(pooled, own_variance(candidate)), max(pooled, own_variance(incumbent))
    run_var = var_c / n_c + var_i / n_i
    dof = config.prior_dof + (n_c - 1) + (n_i - 1) if noise_dof is None else noise_dof
    se = math.sqrt(se_query**2 + run_var)
    crit = config.critical(se, run_var, dof)
    low, high = diff - crit * se, diff + crit * se
    k = config.unknown_sd_factor
    robust_low = diff - crit * math.sqrt(se_query**2 + k**2 * pooled / n_c + max(k**2 * pooled, var_i) / n_i)
    if low > 0 and n_c == 1 and config.max_runs > 1 and robust_low <= 0:
        outcome, reason = "inconclusive", (
            f"confirm: better by {diff:+.4f} (lower bound {low:+.4f}) on one run, whose own run-to-run noise is "
            f"unknown; with {k:g}x the estimated noise the bound is {robust_low:+.4f}: earns a run to confirm")
    elif low > 0:
        outcome, reason = "keep", f"better by {diff:+.4f}, lower bound {low:+.4f} > 0 over {n_c} run{'s' * (n_c > 1)}"
    elif diff <= config.promising_z * se:
        outcome, reason = "discard", f"not better beyond noise ({diff:+.4f}, lower bound {low:+.4f})"
    elif n_c < config.max_runs:
        outcome, reason = "inconclusive", f"{diff:+.4f} promising but within noise (lower bound {low:+.4f}); earns a re-run"
    else:
        outcome, reason = "discard", f"{diff:+.4f} still within noise after {n_c} runs"
    return Verdict(outcome, diff, low, high, se, se_query, noise_sd, n_c, n_i, reason)
