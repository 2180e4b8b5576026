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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

PerQuery = dict[str, dict[str, float]]  # task -> query id -> main-metric value


@dataclass(frozen=True)
class GateConfig:
    alpha: float = 0.05  # the false-keep rate over all the looks at one candidate
    max_runs: int = 3  # runs of one candidate before an inconclusive one is discarded
    n_boot: int = 1000
    prior_run_sd: float = 0.004  # run-to-run sd of the mean score assumed before repeats are measured
    prior_dof: float = 2.0  # how many degrees of freedom that prior weighs
    promising_z: float = 1.0  # an unproven candidate earns a re-run only if it is this many SEs above zero
    seed: int = 0

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1 - self.alpha / self.max_runs)


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
    rng = np.random.default_rng(seed)
    replicates = np.zeros(n_boot)
    for task in candidate:
        diff = candidate[task] - incumbent[task]
        idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
        replicates += diff[idx].mean(axis=1)
    replicates /= len(candidate)
    point = float(np.mean([(candidate[t] - incumbent[t]).mean() for t in candidate]))
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
           config: GateConfig = GateConfig()) -> Verdict:
    """The verdict on a candidate measured len(candidate_runs) times against the incumbent's runs."""
    if not candidate_runs or not incumbent_runs:
        raise ValueError("the gate needs at least one run of the candidate and one of the incumbent")
    incumbent = as_arrays(incumbent_runs)
    candidate = as_arrays(candidate_runs, {task: sorted(scores) for task, scores in incumbent_runs[0].items()})
    return decide_arrays(candidate, incumbent, noise_sd, config)


def decide_arrays(candidate: dict[str, np.ndarray], incumbent: dict[str, np.ndarray], noise_sd: float,
                  config: GateConfig = GateConfig()) -> Verdict:
    """decide() on aligned arrays: task -> (runs x queries), the same queries in the same order on both sides."""
    n_c, n_i = len(next(iter(candidate.values()))), len(next(iter(incumbent.values())))
    diff, se_query = paired_bootstrap_se({t: a.mean(axis=0) for t, a in candidate.items()},
                                         {t: a.mean(axis=0) for t, a in incumbent.items()}, config.n_boot, config.seed + n_c)
    se = math.sqrt(se_query**2 + noise_sd**2 * (1 / n_c + 1 / n_i))
    low, high = diff - config.z * se, diff + config.z * se
    if low > 0:
        outcome, reason = "keep", f"better by {diff:+.4f}, lower bound {low:+.4f} > 0"
    elif diff <= config.promising_z * se:
        outcome, reason = "discard", f"not better beyond noise ({diff:+.4f}, lower bound {low:+.4f})"
    elif n_c < config.max_runs:
        outcome, reason = "inconclusive", f"{diff:+.4f} promising but within noise (lower bound {low:+.4f}); earns a re-run"
    else:
        outcome, reason = "discard", f"{diff:+.4f} still within noise after {n_c} runs"
    return Verdict(outcome, diff, low, high, se, se_query, noise_sd, n_c, n_i, reason)
