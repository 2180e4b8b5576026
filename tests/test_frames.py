"""The notebook API's parts: the normalized score against a ladder of the same sets (and none without one), the
frames over trial and loop folders checked against the records they were read from, load() and the HTML reprs,
and loop() building the typed loop config the command line builds."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from autoembed import ladder
from autoembed.trial import summary
from tests import compare_driver

FULL = ladder.ladders()["embed|full"]


def full_score(dev: float, heldout: float, base_dev: float | None = None) -> dict:
    part = lambda v: {"mean": {"ndcg@10": v}}  # noqa: E731
    return {"mode": "full", "dev": part(dev), "heldout": part(heldout),
            "base": {"dev": part(FULL["base"]["dev"] if base_dev is None else base_dev), "heldout": part(FULL["base"]["heldout"])}}


def test_normalized_score_is_zero_at_the_base_one_at_the_reference_and_linear_between():
    base, ref = FULL["base"], FULL["reference"]
    mid = {s: (base[s] + ref[s]) / 2 for s in ("dev", "heldout")}
    assert ladder.normalized(full_score(base["dev"], ref["heldout"]), "embed")["dev"] == pytest.approx(0.0)
    assert ladder.normalized(full_score(base["dev"], ref["heldout"]), "embed")["heldout"] == pytest.approx(1.0)
    n = ladder.normalized(full_score(mid["dev"], mid["heldout"]), "embed")
    assert n["dev"] == pytest.approx(0.5) and n["heldout"] == pytest.approx(0.5) and n["key"] == "embed|full"
    line = summary.normalized_line(n)
    assert line.startswith("normalized: dev 0.50, heldout 0.50 (base model 0, reference recipe 1; ladder embed|full")


def test_no_ladder_for_other_sets_is_said_not_borrowed(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOEMBED_HOME", str(tmp_path))
    fast = {**full_score(0.7, 0.7), "mode": "fast", "sizes": {"fast_queries": 200, "fast_docs": 1000}}
    n = ladder.normalized(fast, "embed")
    assert n["key"] == "embed|fast:200x1000" and n.get("dev") is None and n.get("heldout") is None
    assert "no reference ladder for embed|fast:200x1000" in n["reason"]
    assert "autoembed reference --task embed --fast --fast-size 200,1000" in n["reason"]
    assert summary.normalized_line(n).startswith("normalized: none: no reference ladder")
    # a base model that scores differently from the ladder's base: other data, refused per split
    odd = ladder.normalized(full_score(0.6, 0.66, base_dev=0.60), "embed")
    assert odd.get("dev") is None and odd["heldout"] is not None and "measured on other data" in odd["reason"]


def test_a_ladder_saved_by_autoembed_reference_is_found_for_its_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOEMBED_HOME", str(tmp_path))
    rung = lambda v: {s: {"mean": {"ndcg@10": v + d}} for s, d in (("dev", 0), ("validation", 0.01), ("heldout", 0.02))}  # noqa: E731
    result = {"task": "embed", "main_metric": "ndcg@10", "fast": True, "fast_queries": 200, "fast_docs": 1000,
              "minutes": 4, "created": "today", "machine": {"device": "cpu"},
              "splits": {}, "rungs": {"base": rung(0.70), "bm25": rung(0.6), "recipe": rung(0.74)}}
    path = ladder.save_from_reference(result)
    assert path.parent == tmp_path / "ladders"
    score = {"mode": "fast", "sizes": {"fast_queries": 200, "fast_docs": 1000},
             "dev": {"mean": {"ndcg@10": 0.73}}, "heldout": {"mean": {"ndcg@10": 0.70}},
             "base": {"dev": {"mean": {"ndcg@10": 0.70}}, "heldout": {"mean": {"ndcg@10": 0.72}}}}
    n = ladder.normalized(score, "embed")
    assert n["dev"] == pytest.approx(0.75) and n["heldout"] == pytest.approx(-0.5) and n["reason"] is None


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A simulated trial and a simulated loop (recipe target, search meta-agent) made through autoembed.run."""
    import autoembed.run as ae

    root = tmp_path_factory.mktemp("frames")
    home = root / "home"
    compare_driver.register_ladder(home)
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOEMBED_HOME", str(home))
    trial = compare_driver.simulated_trial(f"recipe:{compare_driver.RECIPE}", root / "results" / "trial")
    lp = ae.loop(hours=1, trial_hours=0.001, sandbox="none", baseline_runs=2, max_iterations=2,
                 out=str(root / "results" / "loop"), trial_runner=compare_driver.simulated_trial,
                 smoke=compare_driver.quick_smoke, progress=False)
    yield root / "results", trial.run_dir, lp
    mp.undo()


def _per_query(folder):
    with gzip.open(folder / "per_query.json.gz", "rt") as fh:
        return json.load(fh)


def test_frames_hold_what_the_records_hold(folders):
    import autoembed.run as ae

    results, trial_dir, lp = folders
    assert lp.exit_code == 0
    trials = ae.trials_df(results)
    folders_on_disk = [trial_dir] + sorted((lp.run_dir / "trials").iterdir())
    assert sorted(trials["run_dir"]) == sorted(str(p) for p in folders_on_disk)
    assert list(trials.columns[:7]) == ["comparison", "cell", "meta_model", "task_model", "repeat", "loop_id", "trial_id"]
    assert trials["clean"].tolist() == [True] * len(trials)
    for _, row in trials.iterrows():
        score = json.loads((results.parent / row["run_dir"]).joinpath("score.json").read_text())
        for split in ("dev", "validation", "heldout"):
            assert row[split] == score[split]["mean"]["ndcg@10"]
            assert row[f"normalized_{split}"] == pytest.approx((row[split] - 0.5) / 0.1)
        assert row["sets"] == "embed|fast:300x3000"
        assert (row["loop_id"] == "loop") == ("/loop/" in row["run_dir"])

    ledger = ae.ledger_df(lp.run_dir)
    rows = [json.loads(line) for line in (lp.run_dir / "ledger.jsonl").read_text().splitlines()]
    held = {json.loads(line)["row_id"]: json.loads(line) for line in (lp.run_dir / "heldout.jsonl").read_text().splitlines()}
    assert list(ledger["row_id"]) == [r["row_id"] for r in rows]
    for (_, row), record in zip(ledger.iterrows(), rows):
        assert row["status"] == record["status"]
        assert row["heldout"] == held[record["row_id"]]["heldout"]["mean"]
        assert row["dev"] == record["dev"]["mean"]

    per_task = ae.scores_df(trial_dir)
    per_query = ae.scores_df(trial_dir, per="query")
    pq = _per_query(trial_dir)
    assert len(per_query) == sum(len(q) for tasks in pq["submission"].values() for q in tasks.values())
    means = per_query.groupby(["split", "dataset"])["score"].mean()
    for _, row in per_task.iterrows():  # score.json's per-task means are the per-query means
        assert means[(row["split"], row["dataset"])] == pytest.approx(row["score"])
        assert row["base"] == pytest.approx(np.mean(list(pq["base"][row["split"]][row["dataset"]].values())))
    with pytest.raises(ValueError, match="per must be"):
        ae.scores_df(trial_dir, per="sample")


def test_load_reopens_each_kind_with_a_table_and_a_plot(folders, tmp_path):
    import autoembed.run as ae
    from autoembed.experiments.results import LoopView, TrialView

    results, trial_dir, lp = folders
    trial, loop = ae.load(trial_dir), ae.load(lp.run_dir)
    assert isinstance(trial, TrialView) and isinstance(loop, LoopView)
    html = trial._repr_html_()
    assert "normalized" in html and "change 95% CI" in html and f"{(trial.table().loc['heldout', 'ndcg@10']):.4f}" in html
    summary_ = loop.summary()
    best = loop.ledger[loop.ledger["status"] == "keep"]
    scored = loop.ledger[loop.ledger["status"].isin(("keep", "discard", "inconclusive"))]  # a keep's confirming run too
    assert summary_.loc["baseline", "runs"] == 2 and "<b>loop loop</b>" in loop._repr_html_()
    assert summary_.loc["best", "gated"] == pytest.approx(scored[scored["commit"] == best["commit"].iloc[-1]]["gate_value"].mean())
    assert trial.plot().axes and loop.plot().axes
    with pytest.raises(FileNotFoundError, match="not a trial"):
        ae.load(tmp_path)


def test_loop_builds_the_typed_config_the_command_line_builds(tmp_path):
    import autoembed.experiments.notebook as nb
    import autoembed.run as ae
    from autoembed.loop.config import field_names, new_loop, resume_loop

    assert ae.loop is nb.loop and ae.trials_df is nb.trials_df
    with pytest.raises(ValueError, match="no_such_option") as bad:
        ae.loop(no_such_option=1, out=str(tmp_path / "x"))
    assert all(name in str(bad.value) for name in field_names()), "the error lists the valid option names"
    with pytest.raises(ValueError, match="more than the loop's --hours"):
        ae.loop(hours=0.1, trial_hours=0.5, out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    for gpus in ("0,1", [0, 1]):
        run_dir, config = new_loop({"gpus": gpus, "fast": False, "seed": None}, tmp_path / "y")
        assert config.gpus == ["0", "1"] and config.fast is False and config.seed == 0 and run_dir == tmp_path / "y"

    def crash(agent_spec, out, gpu, say, hours=None):
        out.mkdir(parents=True)
        meta = {"status": "scored", "exit_reason": "crashed", "exit_detail": "Traceback ...\nMemoryError"}
        (out / "meta.json").write_text(json.dumps(meta))
        return compare_driver._Result(out, meta, None)

    common = {"trial_runner": crash, "smoke": compare_driver.quick_smoke, "progress": False}
    lp = ae.loop(hours=1, trial_hours=0.001, sandbox="none", baseline_runs=1, out=str(tmp_path / "loop"), **common)
    again = ae.loop(resume=lp.run_dir, max_iterations=3, **common)
    assert again.run_dir == lp.run_dir and again.exit_code is not None
    _, config = resume_loop(lp.run_dir, {"max_iterations": 3})
    assert (config.sandbox, config.trial_hours, config.max_iterations) == ("none", 0.001, 3), "the saved config, overridden"
    with pytest.raises(ValueError, match="a run keeps its meta"):
        ae.loop(resume=lp.run_dir, meta="anthropic:claude-opus-4-5", **common)
    with pytest.raises(AttributeError):
        ae.no_such_thing  # noqa: B018


def test_a_loop_whose_every_trial_crashed_still_shows(tmp_path):
    """Its ledger holds only crash rows (no score columns at all): the frame, the table and the plot still come,
    and the exit status says the loop stopped."""
    import autoembed.run as ae

    def crash(agent_spec, out, gpu, say, hours=None):
        out.mkdir(parents=True)
        meta = {"status": "scored", "exit_reason": "crashed", "exit_detail": "Traceback ...\nMemoryError"}
        (out / "meta.json").write_text(json.dumps(meta))
        return compare_driver._Result(out, meta, None)

    lp = ae.loop(hours=1, trial_hours=0.001, sandbox="none", baseline_runs=1, out=str(tmp_path / "loop"),
                 trial_runner=crash, smoke=compare_driver.quick_smoke, progress=False)
    assert lp.exit_code == 1
    ledger = lp.ledger
    assert set(ledger["status"]) == {"crash"} and ledger["gate_value"].isna().all()
    assert "crash 2" in lp._repr_html_() and lp.summary().loc["baseline", "runs"] == 0
    assert lp.plot().axes


def test_clean_says_exit_0_even_where_status_says_scored(tmp_path):
    import autoembed.run as ae

    for name, change in (("clean", {}), ("interrupted", {"exit_reason": "interrupted"}),
                         ("cut_while_scoring", {"status": "interrupted_while_scoring"})):
        compare_driver.simulated_trial(f"recipe:{compare_driver.RECIPE}", tmp_path / name)
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        (tmp_path / name / "meta.json").write_text(json.dumps({**meta, **change}))
    flagged = tmp_path / "flagged"
    compare_driver.simulated_trial(f"recipe:{compare_driver.RECIPE}", flagged)
    score = json.loads((flagged / "score.json").read_text())
    (flagged / "score.json").write_text(json.dumps({**score, "status": "flagged", "reasons": ["read the labels"]}))
    trials = ae.trials_df(tmp_path).set_index("trial_id")
    assert (trials.loc["interrupted", "status"], trials.loc["flagged", "status"]) == ("scored", "scored")
    assert trials["clean"].to_dict() == {"clean": True, "cut_while_scoring": False, "flagged": False, "interrupted": False}


def test_a_trial_plot_shows_each_change_from_the_base_with_its_interval(tmp_path):
    from matplotlib.container import ErrorbarContainer

    import autoembed.run as ae

    result = compare_driver.simulated_trial(f"recipe:{compare_driver.RECIPE}", tmp_path / "trial")
    meta = {**result.meta, "scores": summary.headline(result.score, summary.load_per_query(result.run_dir), bootstrap=200)}
    (tmp_path / "trial" / "meta.json").write_text(json.dumps(meta))
    ax = ae.load(tmp_path / "trial").plot().axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3 and [t.get_text() for t in ax.get_xticklabels()] == ["dev", "validation", "heldout"]
    for container, split in zip(bars, ("dev", "validation", "heldout")):
        (x, y), = container.lines[0].get_xydata()
        assert y == pytest.approx(meta["scores"][split]["change"])
        low, high = container.lines[2][0].get_segments()[0][:, 1]
        assert (low, high) == pytest.approx(tuple(meta["scores"][split]["change_ci"]))
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in ax.get_lines()), "a zero line"
    bottom, top = ax.get_ylim()
    assert top - bottom < 0.2, "scaled to the changes, not to 0-1"
