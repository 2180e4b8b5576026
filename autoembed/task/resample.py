"""Resampling the queries of a score: the bootstrap every interval of this project comes from (numpy only, so the
loop's gate and a trial's summary read it without importing torch)."""

from __future__ import annotations

import numpy as np


def bootstrap(per_task: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap over queries. Each task's queries are resampled with replacement; the
    mean over tasks is resampled jointly (one replicate resamples every task once), so its interval
    reflects every task's noise. Returns {task or "mean": {"ci": [lo, hi], "se": float}}."""
    replicates = bootstrap_replicates(per_task, n_boot, seed)
    return {name: _interval(reps, alpha) for name, reps in replicates.items()}


def bootstrap_replicates(per_task: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """n_boot resampled means for each task and for the mean over tasks (same draws)."""
    rng = np.random.default_rng(seed)
    reps: dict[str, np.ndarray] = {}
    for name, values in per_task.items():
        values = np.asarray(values, dtype=np.float64)
        if len(values) == 0:
            raise ValueError(f"task {name!r} has no queries to bootstrap")
        if n_boot <= 0:
            reps[name] = np.full(1, values.mean())
            continue
        draws = rng.integers(0, len(values), size=(n_boot, len(values)))
        reps[name] = values[draws].mean(axis=1)
    if reps:
        reps["mean"] = np.mean(np.stack(list(reps.values())), axis=0)
    return reps


def paired_bootstrap(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """The difference b - a of the mean over tasks, with a CI from resampling the same queries for
    both (per-query scores must be aligned: the same queries in the same order). Also gives
    p_not_better: the share of replicates where b does not beat a."""
    if set(a) != set(b):
        raise ValueError(f"paired_bootstrap needs the same tasks, got {sorted(a)} and {sorted(b)}")
    diff = {}
    for name in a:
        va, vb = np.asarray(a[name], dtype=np.float64), np.asarray(b[name], dtype=np.float64)
        if va.shape != vb.shape:
            raise ValueError(f"task {name!r}: per-query arrays differ in length ({len(va)} vs {len(vb)}); are these the same queries?")
        diff[name] = vb - va
    reps = bootstrap_replicates(diff, n_boot, seed)
    point = float(np.mean([d.mean() for d in diff.values()]))
    out = _interval(reps["mean"], alpha)
    return {"diff": point, **out, "p_not_better": float((reps["mean"] <= 0).mean())}


def _interval(replicates: np.ndarray, alpha: float) -> dict:
    lo, hi = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    se = float(replicates.std(ddof=1)) if len(replicates) > 1 else 0.0
    return {"ci": [float(lo), float(hi)], "se": se}
