"""The gate on a noisy machine: false keeps (a candidate whose true effect is 0) when run-to-run noise is larger
than the gate's prior, when the candidate is noisier than the pooled estimate, and when the incumbent's first
measurement ran low; and what that robustness costs in true keeps.

Simulated as in tests/test_gate.py (per-query difficulty shared by every run, a shift per run, per-query noise per
run), with the loop's procedure for one candidate: the incumbent's A/A runs (the first one shifted by `bias`),
then the candidate's runs until a verdict that is not inconclusive, the run-to-run sd pooled from both commits'
repeats and shrunk towards the gate's prior. The first candidate of a loop, so no other repeats help the pooled
estimate. `python -m tests.test_gate_noise` prints every case's rates.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pytest

from autoembed.loop import gate
from autoembed.loop.config import CPU_BASELINE_RUNS

TASKS, QUERY_NOISE = 3, 0.15
CPU_QUERIES, GPU_QUERIES = 200, 3000  # per task: the fast subsets a CPU loop gates on, and the full sets
LOOPS = 1000  # per case: a rate of 5% is then measured to about +-0.7% (one sd), so 7% stands out
CONFIG = gate.GateConfig(n_boot=200)


@dataclass(frozen=True)
class Case:
    name: str
    run_sd: float = 0.003  # the incumbent's true run-to-run sd
    cand_sd: float | None = None  # the candidate's (None: the same)
    bias: float = 0.0  # added to the incumbent's first run
    queries: int = CPU_QUERIES
    baseline_runs: int = CPU_BASELINE_RUNS


NULL_CASES = [
    Case("CPU, run sd 0.003 (the measured noise)"),
    Case("CPU, run sd 0.006", run_sd=0.006),
    Case("CPU, run sd 0.01", run_sd=0.01),
    Case("CPU, candidate twice as noisy (0.006 vs 0.003)", cand_sd=0.006),
    Case("CPU, first baseline run low by 0.01", bias=-0.01),
    Case("CPU, first baseline run low by 0.02", bias=-0.02),
    Case("GPU full sets, 3 A/A runs, candidate twice as noisy", cand_sd=0.006, queries=GPU_QUERIES, baseline_runs=3),
]
POWER_CASES = [Case("CPU, run sd 0.003"), Case("GPU full sets, 3 A/A runs", queries=GPU_QUERIES, baseline_runs=3)]


def gated(seed: int, case: Case, effect: float = 0.0, config: gate.GateConfig = CONFIG) -> tuple[str, int]:
    """(the final outcome, the candidate's runs) for one simulated candidate."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0, 1, (TASKS, case.queries))

    def run(sd: float, shift: float) -> np.ndarray:
        return difficulty + shift + rng.normal(0, sd) + rng.normal(0, QUERY_NOISE, difficulty.shape)

    incumbent = [run(case.run_sd, case.bias if i == 0 else 0.0) for i in range(case.baseline_runs)]
    candidate: list[np.ndarray] = []
    arrays = lambda runs: {f"t{t}": np.stack([r[t] for r in runs]) for t in range(TASKS)}  # noqa: E731
    means = lambda runs: [float(r.mean()) for r in runs]  # noqa: E731
    while True:
        candidate.append(run(case.cand_sd or case.run_sd, effect))
        sd, _ = gate.run_sd([means(incumbent), means(candidate)], config.prior_run_sd, config.prior_dof)
        verdict = gate.decide_arrays(arrays(candidate), arrays(incumbent), sd, config)
        if verdict.outcome != "inconclusive":
            return verdict.outcome, len(candidate)


def keep_rate(case: Case, effect: float = 0.0, loops: int = LOOPS, seed: int = 0) -> tuple[float, float]:
    """(the share of candidates kept, the mean runs per candidate)."""
    outcomes = [gated(seed * 100_000 + i, case, effect) for i in range(loops)]
    return sum(o == "keep" for o, _ in outcomes) / loops, float(np.mean([n for _, n in outcomes]))


@pytest.mark.parametrize("case", NULL_CASES, ids=lambda c: c.name)
def test_false_keeps_stay_at_most_5_percent_on_a_noisy_machine(case):
    loops = LOOPS // 2 if case.queries == GPU_QUERIES else LOOPS  # the full sets' bootstrap is 15 times slower
    rate, runs = keep_rate(case, loops=loops)
    print(f"{case.name}: A/A kept {rate:.3f}, {runs:.2f} runs per candidate")
    assert rate <= 0.05, f"{case.name}: kept {rate:.1%} of candidates no better than the incumbent"


@pytest.mark.parametrize("case", POWER_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("effect, floor", [(0.01, 0.05), (0.02, 0.4)])
def test_what_the_robustness_costs_in_true_keeps(case, effect, floor):
    loops = 100 if case.queries == GPU_QUERIES else 300
    rate, runs = keep_rate(case, effect, loops=loops, seed=1)
    print(f"{case.name}: +{effect} kept {rate:.3f}, {runs:.2f} runs per candidate")
    assert rate >= floor


if __name__ == "__main__":
    loops = int(sys.argv[1]) if len(sys.argv) > 1 else LOOPS
    for case in NULL_CASES:
        print(f"{case.name}: A/A kept %.3f (%.2f runs)" % keep_rate(case, loops=loops), flush=True)
    for case in POWER_CASES:
        for effect in (0.01, 0.02):
            print(f"{case.name}: +{effect} kept %.3f (%.2f runs)" % keep_rate(case, effect, loops=loops, seed=1), flush=True)


def test_a_keep_on_one_run_that_rests_on_the_estimated_noise_is_confirmed_first():
    rng = np.random.default_rng(3)
    difficulty = rng.uniform(0, 1, (TASKS, GPU_QUERIES))
    runs = lambda shifts: {f"t{t}": np.stack([difficulty[t] + s + rng.normal(0, 0.05, GPU_QUERIES) for s in shifts])  # noqa: E731
                           for t in range(TASKS)}
    incumbent = runs([0.0, 0.001, -0.001])
    first = gate.decide_arrays(runs([0.02]), incumbent, 0.004, CONFIG)
    assert first.outcome == "inconclusive" and first.reason.startswith("confirm:") and first.ci_low > 0, first
    assert gate.decide_arrays(runs([0.02, 0.021]), incumbent, 0.004, CONFIG).outcome == "keep"
    clear = gate.decide_arrays(runs([0.06]), incumbent, 0.004, CONFIG)
    assert clear.outcome == "keep", clear  # beyond doubt even at twice the noise: no confirming run
    spread = gate.decide_arrays(runs([0.0, 0.04]), incumbent, 0.004, CONFIG)  # its own runs disagree by 0.04
    assert spread.se > 0.02 / np.sqrt(2) and spread.outcome != "keep", spread
