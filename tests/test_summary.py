"""The trial summary cannot mislead: it names the sets that were scored, gives each change from the base model with
a paired CI (checked here against an independent normal-approximation interval), says in words whether the change
is noise, and the exit status is 0 only for a clean trial."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from autoembed.trial import summary


def score_doc(dev: float, base_dev: float, *, status: str = "ok", mode: str = "fast") -> dict:
    return {"status": status, "scored_as": "final_model" if status == "ok" else "base_model",
            "reasons": [] if status == "ok" else ["lineage: not derived from the base model"],
            "mode": mode, "sizes": {"fast_queries": 200, "fast_docs": 1000} if mode == "fast" else None,
            "dev": {"mean": {"ndcg@10": dev}}, "heldout": {"mean": {"ndcg@10": 0.5}},
            "base": {"dev": {"mean": {"ndcg@10": base_dev}}, "heldout": {"mean": {"ndcg@10": 0.5}}}}


def per_query(base: dict[str, np.ndarray], ours: dict[str, np.ndarray], split: str = "dev") -> dict:
    as_map = lambda values: {f"q{i}": float(v) for i, v in enumerate(values)}  # noqa: E731
    return {"base": {split: {t: as_map(v) for t, v in base.items()}},
            "submission": {split: {t: as_map(v) for t, v in ours.items()}}}


def test_a_constant_gain_is_exact_and_beyond_noise():
    rng = np.random.default_rng(1)
    base = {"a": rng.uniform(0, 0.8, 50), "b": rng.uniform(0, 0.8, 70)}
    ours = {t: v + 0.1 for t, v in base.items()}
    row = summary.headline(score_doc(0.6, 0.5), per_query(base, ours))["dev"]
    assert row["change"] == pytest.approx(0.1) and row["change_ci"] == pytest.approx([0.1, 0.1])
    assert row["n_queries"] == 120 and row["noise"].startswith("better than the base beyond noise")


def test_the_paired_ci_matches_a_normal_approximation():
    """Mean over two tasks of per-query differences: an independent CI is mean +- 1.96 * sqrt(sum var/n)/2."""
    rng = np.random.default_rng(7)
    base = {"a": rng.uniform(0, 1, 400), "b": rng.uniform(0, 1, 600)}
    diffs = {"a": rng.normal(0.004, 0.1, 400), "b": rng.normal(0.004, 0.1, 600)}
    ours = {t: base[t] + diffs[t] for t in base}
    row = summary.headline(score_doc(0.5, 0.5), per_query(base, ours), bootstrap=4000)["dev"]
    point = np.mean([d.mean() for d in diffs.values()])
    half = 1.96 * np.sqrt(sum(d.var(ddof=1) / len(d) for d in diffs.values())) / 2
    assert row["change"] == pytest.approx(point)
    assert row["change_ci"][0] == pytest.approx(point - half, abs=0.002)
    assert row["change_ci"][1] == pytest.approx(point + half, abs=0.002)
    assert row["noise"].startswith("not distinguishable from noise")


def test_pairs_only_the_queries_both_were_scored_on():
    base = {"a": np.array([0.1, 0.2, 0.3])}
    pq = per_query(base, {"a": np.array([0.2, 0.3, 0.4])})
    del pq["submission"]["dev"]["a"]["q2"]
    row = summary.paired_change(pq, "dev", "ndcg@10", 100)
    assert row["n_queries"] == 2 and row["change"] == pytest.approx(0.1)


def test_the_block_names_the_sets_and_a_base_scored_trial_shows_no_change(tmp_path):
    meta = {"agent": "recipe", "exit_reason": "finished", "sandbox": {"kind": "bwrap"}}
    fast = score_doc(0.7183, 0.7152)
    meta["scores"] = summary.headline(fast, None)
    block = summary.render("r1", tmp_path, meta, fast)
    assert "sets: fast subsets (200 queries x 1000 docs per task; not comparable with full-set numbers)" in block
    assert "dev_ndcg@10: 0.7183 (base 0.7152; change +0.0031): unknown: no per-query scores to pair" in block
    assert summary.sets_scored(score_doc(0.5, 0.5, mode="full")) == "full sets"

    flagged = score_doc(0.5, 0.5, status="flagged")
    meta["scores"] = summary.headline(flagged, None)
    block = summary.render("r1", tmp_path, meta, flagged)
    assert meta["scores"]["dev"]["noise"] == "no change: scored as the base model"
    assert "result: NOT CLEAN" in block
    assert "reason: scored flagged (counted as base_model): lineage: not derived from the base model" in block


OUTCOMES = {  # meta, score status -> exit status, the reason the block prints
    "clean": ({"exit_reason": "finished", "status": "scored"}, "ok", 0, None),
    "timed out": ({"exit_reason": "deadline", "status": "scored"}, "ok", 1, "timed out: the agent was still running"),
    "crashed": ({"exit_reason": "crashed", "status": "scored", "exit_detail": "Traceback\n  ...\nValueError: gave up"},
                "broken", 1, "the agent crashed: ValueError: gave up"),
    "flagged": ({"exit_reason": "finished", "status": "scored"}, "flagged", 1, "scored flagged"),
    "interrupted": ({"exit_reason": "interrupted", "status": "scored"}, "ok", 1, "interrupted before the agent finished"),
    "score failed": ({"exit_reason": "finished", "status": "score_failed", "score_error": "boom\nOSError: disk"},
                     None, 1, "scoring failed: OSError: disk"),
}


@pytest.mark.parametrize("case", list(OUTCOMES))
def test_exit_status_and_reason(case, tmp_path):
    meta, status, code, reason = OUTCOMES[case]
    score = score_doc(0.5, 0.5, status=status) if status else None
    assert summary.exit_code(meta, score) == code
    block = summary.render("r1", tmp_path, {**meta, "scores": summary.headline(score, None) if score else None}, score)
    if reason is None:
        assert "result: clean" in block and "\nreason: " not in block
    else:
        assert "result: NOT CLEAN" in block and f"reason: {reason}" in block, block


def test_per_query_file_round_trip(tmp_path):
    pq = per_query({"a": np.array([0.5])}, {"a": np.array([0.75])})
    with gzip.open(tmp_path / summary.PER_QUERY_FILE, "wt") as fh:
        json.dump(pq, fh)
    assert summary.load_per_query(tmp_path) == pq
    assert summary.load_per_query(Path(tmp_path / "missing")) is None


def test_the_block_prints_the_trials_cost_or_says_unpriced(tmp_path):
    meta = {"agent": "claude", "exit_reason": "finished", "sandbox": {"kind": "bwrap"}, "spend_usd": 0.0123,
            "models": {"claude-sonnet-4-6": {"calls": 3, "usd": 0.0100}, "claude-haiku-4-5": {"calls": 1, "usd": 0.0023}}}
    block = summary.render("r1", tmp_path, meta, None)
    assert "cost: $0.0123 (4 model calls: claude-sonnet-4-6 3, claude-haiku-4-5 1)" in block.splitlines()
    meta["models"]["local-model"] = {"calls": 2, "usd": None}
    assert "cost: $0.0123 + unpriced (model local-model)" in summary.render("r1", tmp_path, meta, None)
    meta["models"] = {"local-model": {"calls": 2, "usd": None}}
    assert "cost: unpriced (model local-model); 2 model calls: local-model 2" in summary.render("r1", tmp_path, meta, None)
    assert "cost: $0.0000 (no model call answered)" in summary.render("r1", tmp_path, {**meta, "models": {},
                                                                                      "spend_usd": 0.0}, None)
    assert "cost:" not in summary.render("r1", tmp_path, {"agent": "x"}, None)  # no spend recorded yet
    assert "cost: $0.5000" in summary.render("r1", tmp_path, {"agent": "x", "spend_usd": 0.5}, None).splitlines()
