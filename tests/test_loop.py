"""The meta-loop: keep/revert of real commits, kill -9 at every stage then resume, invalid and duplicate
candidates, the LLM meta-agent through its tools (scripted), and no held-out reaching the meta-agent.

Trials are simulated (tests/loop_driver.py: instant, scored from the file's knobs) except in the end-to-end
test at the bottom, which trains for real on the tiny task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoembed import editable
from autoembed.loop.ledger import Ledger
from autoembed.llm.scripted import ScriptedLLM
from autoembed.loop.meta.base import MetaAgent, Proposal
from autoembed.loop.meta.llm_agent import LLMMetaAgent
from autoembed.loop.meta.repo import TargetRepo
from autoembed.paths import REPO_ROOT
from tests import loop_driver

RECIPE = (REPO_ROOT / "harnesses" / "recipe.py").read_text()
HARNESS = (REPO_ROOT / "harnesses" / "baseline.py").read_text()


def check_consistent(run_dir: Path, iterations: int) -> list[dict]:
    """The invariants a loop's records keep whatever happened to it; returns the ledger rows."""
    rows = Ledger(run_dir).rows()
    intents = [json.loads(line) for line in (run_dir / "intents.jsonl").read_text().splitlines() if line.strip()]
    row_ids = [r["row_id"] for r in rows]
    assert len(row_ids) == len(set(row_ids)), "a ledger row was written twice"
    trial_intents = [i["trial_id"] for i in intents if i["op"] == "trial"]
    assert sorted(trial_intents) == sorted(r["trial_id"] for r in rows if r["trial_id"]), \
        "every trial begun has exactly one row, and every trial row was begun"
    candidates = {i["id"]: i for i in intents if i["op"] == "candidate"}
    assert sorted(candidates) == list(range(1, iterations + 1))
    repo = TargetRepo.open(run_dir / "view" / "repo", "recipe.py")
    refs = repo.candidates()
    for number, cand in candidates.items():
        assert refs[number] == cand["commit"], f"candidate {number}'s ref does not hold its commit"
        mine = [r for r in rows if r.get("candidate") == number]
        assert mine and mine[-1]["status"] in ("keep", "discard", "invalid", "crash", "duplicate"), \
            f"candidate {number} was left undecided: {[r['status'] for r in mine]}"
    kept = [r["commit"] for r in rows if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
    baseline = repo.repo.git.rev_list("--max-parents=0", "main")
    incumbent = baseline
    for row in rows:  # each gated row names the incumbent it was measured against, which is its commit's git parent
        if row["kind"] in ("candidate", "rerun") and row["status"] in ("keep", "discard", "inconclusive"):
            assert row["parent"] == incumbent, f"{row['row_id']} names {row['parent'][:10]}, measured against {incumbent[:10]}"
            assert repo.repo.commit(row["commit"]).parents[0].hexsha == incumbent
            if row["status"] == "keep":
                incumbent = row["commit"]
    assert repo.best() == (kept[-1] if kept else baseline), "main is not the last kept commit"
    assert repo.work_file.read_text() == repo.read(repo.best()), "the working file is not main's"
    assert repo.repo.git.status("--porcelain") == ""
    heldout_ids = [h["row_id"] for h in Ledger(run_dir).heldout()]
    assert len(heldout_ids) == len(set(heldout_ids)) and set(heldout_ids) <= set(row_ids)
    incumbents = {r["commit"] for r in rows if r["status"] == "keep"}
    assert set(heldout_ids) == {r["row_id"] for r in rows if r["status"] in ("keep", "discard", "inconclusive")
                                and r["commit"] in incumbents}, \
        "held-out is scored for every run of the baseline and of kept commits, and for no other"
    return rows


@pytest.mark.parametrize("gpus", [[], ["0", "1"]], ids=["cpu", "two-gpus"])
def test_search_loop_keeps_and_reverts_real_commits(tmp_path, gpus):
    loop = loop_driver.make_loop(tmp_path / "run", 8, gpus=gpus)
    assert loop.run() == 0
    rows = check_consistent(tmp_path / "run", 8)
    assert {r["gpu"] for r in rows if r["trial_id"]} == (set(gpus) or {None})
    # a keep on one run that rests on the estimated noise is confirmed by a re-run first (gate.py): rerun rows too
    statuses = [r["status"] for r in rows if r["kind"] in ("candidate", "rerun")]
    assert "keep" in statuses and "discard" in statuses, statuses
    repo = loop.repo
    for row in rows:
        if row["kind"] not in ("candidate", "rerun") or row["status"] not in ("keep", "discard"):
            continue
        on_main = repo.repo.is_ancestor(row["commit"], "main")
        assert on_main == (row["status"] == "keep"), f"{row['status']} candidate {row['candidate']} on main: {on_main}"
        assert repo.repo.commit(row["commit"]).message.strip() == row["description"]
    # the kept file is the better one by the simulation's own measure
    assert loop_driver.quality(repo.read(repo.best())) > loop_driver.quality(RECIPE)
    # knobs that act only on the other device are never turned (on GPUs the recipe ignores CPU_LR, and so on)
    assert loop.trial_device == ("gpu" if gpus else "cpu")
    # the baseline's rows are iteration 0 (the plot's x axis), also when candidate 1 was prefetched while they ran
    assert {r["iteration"] for r in rows if r["kind"] == "baseline"} == {0}
    idle = {k.name: k.value for k in editable.knobs(RECIPE) if k.device not in (None, loop.trial_device)}
    for cand in loop.candidates().values():
        values = {k.name: k.value for k in editable.knobs(repo.read(cand["commit"]))}
        assert {n: values[n] for n in idle} == idle, cand["description"]
    # Optuna heard every decided candidate: no trial of a candidate is left running
    from optuna.trial import TrialState

    states = {t.number: t.state for t in loop.meta.study.get_trials()}
    numbers = [c["handle"]["trial_number"] for c in loop.candidates().values()]
    assert all(states[n] in (TrialState.COMPLETE, TrialState.FAIL) for n in numbers)
    assert (tmp_path / "run" / "results.tsv").read_text().count("\n") == len(rows) + 1
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700, "the loop's records are its user's alone"
    assert not any(p.stat().st_mode & 0o022 for p in (tmp_path / "run").rglob("*") if not p.is_symlink())
    # held-out: scored for every run of the baseline and of kept commits, never for a discarded candidate
    incumbents = {r["commit"] for r in rows if r["status"] == "keep"}
    with_heldout = {h["row_id"] for h in Ledger(tmp_path / "run").heldout()}
    assert with_heldout == {r["row_id"] for r in rows if r["trial_id"] and r["commit"] in incumbents}
    for row in rows:
        if row["kind"] == "candidate" and row["status"] == "discard" and row["commit"] not in incumbents:
            assert row["heldout"].startswith("deferred"), row
            score = json.loads((tmp_path / "run" / "trials" / row["trial_id"] / "score.json").read_text())
            assert score["deferred"] == ["heldout"] and "heldout" not in score
        elif row["status"] == "keep":
            assert row["heldout"].startswith("scored"), row


def knob_values(source: str) -> dict:
    return {k.name: k.value for k in editable.knobs(source)}


def step_of(repo, sha: str) -> dict:
    """The knobs a commit turned from its git parent's file."""
    before = knob_values(repo.read(repo.repo.commit(sha).parents[0].hexsha))
    return {name: value for name, value in knob_values(repo.read(sha)).items() if before[name] != value}


def phase_counts(run_dir: Path) -> dict:
    stop = [json.loads(line) for line in (run_dir / "intents.jsonl").read_text().splitlines()][-1]
    assert stop["phases"]["wall"] >= stop["phases"]["trials"] + stop["phases"]["record"]
    return stop["phases"]["counts"]


@pytest.mark.parametrize("prefetch,priors", [(True, 2), (True, 1), (False, 2)],
                         ids=["prefetch", "prefetch-one-prior-point", "prefetch-off"])
def test_on_one_gpu_the_next_candidate_is_ready_when_the_gpu_frees(tmp_path, prefetch, priors):
    """The 1-GPU loop's overhead: every candidate is proposed and smoke-checked while a trial runs, also while a
    candidate's trial runs (re-parented if that one is kept); with prefetch off, only while the incumbent cannot
    change, so candidates after the A/A runs pay their proposal and smoke check between trials."""
    from autoembed.loop.meta.search import PRIOR_POINTS

    assert len(PRIOR_POINTS) == 2
    loop = loop_driver.make_loop(tmp_path / "run", 8, gpus=["0"], prior=PRIOR_POINTS[:priors])
    loop.config.prefetch, loop.config.remeasure_every = prefetch, 3  # at least one re-measurement in 8 candidates
    assert loop.run() == 0
    rows = check_consistent(tmp_path / "run", 8)
    counts = phase_counts(tmp_path / "run")
    if prefetch:
        # between trials only after a keep that left the waiting candidate nothing to measure: with one prior point,
        # which turns PRETOKENIZE on, the single step that turns it on waited beside it; with two, the second
        # point waited beside the first and is re-parented onto it, a step back in the source weights
        emptied = sum(1 for r in rows if "nothing left to measure" in (r.get("reason") or ""))
        first = next(r for r in rows if r["kind"] == "candidate")
        assert first["description"].startswith("search (prior point): ") and first["status"] in ("keep", "inconclusive")
        assert emptied == 2 - priors
        assert all(r["trial_id"] is None for r in rows if "nothing left" in (r.get("reason") or ""))
        assert counts.get("propose", 0) <= emptied and counts.get("smoke", 0) <= emptied, (counts, emptied)
        assert counts["propose (during trials)"] >= 8 - emptied and counts["smoke (during trials)"] >= 8 - emptied, counts
        moved = [c for c in loop.candidates().values() if c.get("reparented_from")]
        assert moved, "a keep re-parented the waiting search candidate"
        for cand in moved:  # its own step, set in the kept file: what the kept candidate turned stays turned
            parent = knob_values(loop.repo.read(loop.repo.repo.commit(cand["commit"]).parents[0].hexsha))
            expected = {**parent, **step_of(loop.repo, cand["reparented_from"])}
            assert knob_values(loop.repo.read(cand["commit"])) == expected, cand
        # and the study heard the value of the point measured, not of the one first proposed
        files = {c["handle"]["trial_number"]: knob_values(loop.repo.read(c["commit"])) for c in moved}
        heard = [t for t in loop.meta.study.get_trials() if "measured_for" in t.user_attrs]
        assert heard and all(t.params == {n: files[t.user_attrs["measured_for"]][n] for n in t.params} for t in heard)
        assert any(r["kind"] in ("candidate", "rerun") and r["status"] == "keep" for r in rows)
    else:  # proposed during A/A, re-measurement and re-run trials only (a re-run's candidate is not waiting; how
        # many the seeded search's keeps ask for varies)
        idle_incumbent = sum(1 for r in rows if r["kind"] in ("baseline", "remeasure", "rerun"))
        assert counts.get("propose (during trials)", 0) <= idle_incumbent, counts
        assert counts["propose"] >= 8 - idle_incumbent and counts["smoke"] >= 8 - idle_incumbent, counts
    # the candidate that waits ready for the GPU does not starve the incumbent's periodic re-measurement: once it is
    # due, no new candidate starts before it (a candidate's re-runs, which finish its gate decision, may)
    best, since = None, 0
    for row in (r for r in rows if r["trial_id"]):
        assert row["kind"] != "candidate" or since < loop.config.remeasure_every, [(r["kind"], r["status"]) for r in rows]
        if row["kind"] == "baseline" and best is None or row["status"] == "keep" and row["kind"] in ("candidate", "rerun"):
            best = row["commit"]
        since = 0 if row["commit"] == best else since + 1
    assert any(r["kind"] == "remeasure" for r in rows)


# one GPU: the stages where a proposal made beside the running trial meets that trial's outcome (the other stages
# run as on two GPUs); a CPU loop proposes between trials only, so it never re-parents
KILL_CASES = [(stage, gpus) for stage in loop_driver.STAGES for gpus in ("", "0,1") if stage not in loop_driver.GPU_STAGES
              or gpus] + [(stage, "0") for stage in ("trial", "scored", "row", "reparent")]


GPU_LABELS = {"": "cpu", "0": "one-gpu", "0,1": "two-gpus"}


@pytest.mark.parametrize("stage,gpus", KILL_CASES, ids=[f"{s}-{GPU_LABELS[g]}" for s, g in KILL_CASES])
def test_kill_9_at_each_stage_then_resume_leaves_consistent_records(tmp_path, stage, gpus):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.loop_driver", str(run_dir), "--kill-at", stage,
                           "--iterations", "6", "--gpus", gpus, "--no-prior"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, f"the loop was not killed at {stage}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
    if stage == "partial-row":
        assert not (run_dir / "ledger.jsonl").read_bytes().endswith(b"\n"), "the kill left no partial line"
    loop = loop_driver.make_loop(run_dir, 6, gpus=[g for g in gpus.split(",") if g], prior=False)
    assert loop.run() == 0
    rows = check_consistent(run_dir, 6)
    if stage in ("trial",):
        assert any(r["status"] == "crash" and r.get("interrupted") for r in rows), "the cut-off trial was not recorded"
    for row in rows:  # a trial that had finished is recorded from its folder, never as cut off
        moved = (row.get("reason") or "").startswith("the incumbent changed while this trial ran")  # measured a stale file
        if row["trial_id"] and not moved:
            path = run_dir / "trials" / row["trial_id"] / "meta.json"
            meta = json.loads(path.read_text()) if path.is_file() else {}
            assert (meta.get("status") == "scored") == (row["status"] != "crash"), (row, meta)


class ScriptedMeta(MetaAgent):
    """Proposes the given files in order, and remembers what it was told."""

    name = "scripted-files"

    def __init__(self, files: list[tuple[str, str]]):
        self.files = list(files)
        self.told = []

    def propose(self, ctx):
        if not self.files:
            return None
        source, description = self.files.pop(0)
        return Proposal(source, description)

    def observe(self, feedback):
        self.told.append(feedback)


class EditingMeta(MetaAgent):
    """Edits the incumbent it is given, as an LLM meta-agent does, and proposes while trials run; re-parenting is
    the interface's default (a three-way merge)."""

    name = "scripted-edits"
    pipelined = True

    def __init__(self, edits):
        self.edits = list(edits)
        self.told = []

    def propose(self, ctx):
        if not self.edits:
            return None
        knobs, description = self.edits.pop(0)
        return Proposal(editable.set_knobs(ctx.incumbent_source, knobs), description)

    def observe(self, feedback):
        self.told.append(feedback)


def test_a_prefetched_edit_is_merged_onto_a_kept_candidate_and_a_conflict_is_proposed_again(tmp_path):
    """One GPU: candidate 2 is proposed on the baseline while candidate 1 runs; 1 is kept, so 2 is merged onto it
    (that merge smoke-checked while 1 ran); candidate 3, proposed on 1 while 2 runs, edits the line 2 edits, so
    when 2 is kept it conflicts: an invalid row (no trial), the meta-agent is told, and it proposes again."""
    # candidate 2 a clear gain (+0.029): LR 1e-4 alone (+0.009) is within the gate's noise at 2 A/A runs
    meta = EditingMeta([({"SYMMETRIC_LOSS": True}, "symmetric loss"), ({"LR": 1e-4, "WEIGHT_DEBIAN": 2.0}, "LR 1e-4"),
                        ({"LR": 2e-4}, "LR 2e-4"), ({"SCALE": 30.0}, "scale 30")])
    loop = loop_driver.make_loop(tmp_path / "run", 4, meta_agent=meta, gpus=["0"])
    assert loop.run() == 0
    rows = check_consistent(tmp_path / "run", 4)
    status = {r["candidate"]: r["status"] for r in rows if r.get("candidate")}
    assert status == {1: "keep", 2: "keep", 3: "invalid", 4: status[4]} and status[4] in ("keep", "discard"), status
    cands = loop.candidates()
    assert cands[2]["reparented_from"] and not cands[2]["same_file"]
    best = {k.name: k.value for k in editable.knobs(loop.repo.read(cands[2]["commit"]))}
    assert best["SYMMETRIC_LOSS"] is True and best["LR"] == pytest.approx(1e-4), "both edits in the merged file"
    first = loop.repo.repo.git.rev_parse(f"refs/reparented/0002-{cands[2]['reparented_from'][:12]}")
    assert first == cands[2]["reparented_from"], "the edit as first proposed keeps a ref"
    invalid = next(r for r in rows if r.get("candidate") == 3)
    assert "does not merge" in invalid["reason"] and invalid["trial_id"] is None
    assert any(f.iteration == 3 and f.status == "invalid" for f in meta.told)
    intents = [json.loads(line) for line in (tmp_path / "run" / "intents.jsonl").read_text().splitlines()]
    assert any(i["op"] == "smoked" and i["id"] == 2 and i.get("merged_onto") == cands[1]["commit"] for i in intents)
    counts = phase_counts(tmp_path / "run")
    assert counts.get("smoke", 0) == 1 and counts.get("propose", 0) == 1, counts  # candidate 4's, after the conflict


def test_side_by_side_a_candidate_whose_incumbent_was_kept_first_is_merged_and_tried_again(tmp_path):
    """Two GPUs: candidates 1 and 2 run side by side on the baseline; 1 is recorded first and kept, so 2's trial
    measured a file that is no change of the new incumbent: its row says so (interrupted, not gated against 1),
    and 2 merged onto 1 is tried again and gated against 1."""
    meta = EditingMeta([({"SYMMETRIC_LOSS": True}, "symmetric loss"), ({"LR": 1e-4}, "LR 1e-4")])
    loop = loop_driver.make_loop(tmp_path / "run", 2, meta_agent=meta, gpus=["0", "1"])
    assert loop.run() == 0
    rows = check_consistent(tmp_path / "run", 2)
    seen = [(r["row_id"], r.get("candidate"), r["status"], r["reason"][:200]) for r in rows]  # shown if it fails
    assert not any(r["status"] == "crash" for r in rows if r.get("candidate") != 2), seen
    first, *rest = [r for r in rows if r.get("candidate") == 2]
    assert first["status"] == "crash" and first["interrupted"] and "merged onto the new incumbent" in first["reason"], seen
    assert first["trial_id"] and rest and rest[-1]["status"] in ("keep", "discard"), seen
    cands = loop.candidates()
    assert rest[-1]["parent"] == cands[1]["commit"] == cands[2]["parent"] and rest[-1]["commit"] == cands[2]["commit"]


def test_invalid_and_duplicate_candidates_spend_no_trial(tmp_path):
    from autoembed.agents.recipe import FIXED_ADAPTER_SHA256
    from autoembed.loop.smoke import smoke_check

    crashing = RECIPE.replace("def train(run) -> dict:", "def train(run) -> dict:\n    raise RuntimeError('boom in train')", 1)
    adapter_edited = RECIPE.replace("SAVE_RESERVE_S = 10.0", "SAVE_RESERVE_S = 1.0")
    better = editable.set_knobs(RECIPE, {"SYMMETRIC_LOSS": True, "LR": 1e-4})
    meta = ScriptedMeta([(RECIPE.replace("LR = 5e-5", "LR = = 5e-5"), "a syntax error"),
                         (adapter_edited, "edits the adapter"),
                         (crashing, "raises at run time"),
                         (RECIPE, "the baseline again"),
                         (better, "symmetric loss, higher LR"),
                         (better, "the same again")])

    def smoke(target, source, workdir):  # the real check, in the none sandbox: the crashing file really runs
        return smoke_check(target, source, FIXED_ADAPTER_SHA256, workdir, sandbox="none", task="embed")

    loop = loop_driver.make_loop(tmp_path / "run", 6, meta_agent=meta, smoke=smoke)
    assert loop.run() == 0
    rows = check_consistent(tmp_path / "run", 6)
    by_candidate = {r["candidate"]: r for r in rows if r.get("candidate")}
    assert [by_candidate[n]["status"] for n in range(1, 7)] == ["invalid", "invalid", "invalid", "duplicate", "keep", "duplicate"]
    trials = [r for r in rows if r["trial_id"]]
    assert {r["candidate"] for r in trials} == {None, 5}, "only the valid, new candidate spent a trial"
    told = {f.iteration: f for f in meta.told}
    assert "SyntaxError" in told[1].message
    assert "fixed adapter" in told[2].message
    assert "boom in train" in told[3].message
    assert "the baseline" in told[4].message and told[4].value is not None
    assert "candidate 5" in told[6].message and told[6].value == pytest.approx(told[5].value)


def scripted_meta_script() -> list[dict]:
    """Two iterations of an LLM meta-agent working on harness.py through its tools."""
    return [
        {"tool_calls": [{"name": "list_files", "arguments": {"path": "."}}]},
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "ledger.tsv"}},
                        {"name": "read_file", "arguments": {"path": "repo/harness.py"}}]},
        {"tool_calls": [{"name": "grep", "arguments": {"pattern": "MAX_TURNS", "path": "repo"}}]},
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "../config.json"}}]},  # outside the view: refused
        {"tool_calls": [{"name": "edit_target", "arguments": {"old": "MAX_TURNS = 200", "new": "MAX_TURNS = 120"}}]},
        {"tool_calls": [{"name": "write_notes", "arguments": {"text": "tried fewer turns"}}]},
        {"tool_calls": [{"name": "spot_check", "arguments": {}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"description": "fewer turns: the agent wastes the last ones"}}]},
        # iteration 2: reads what happened, tries to edit the adapter (refused), then edits the prompt
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "ledger.tsv"}},
                        {"name": "list_files", "arguments": {"path": "trials"}}]},
        {"tool_calls": [{"name": "edit_target", "arguments": {"old": "def harness_main(env) -> int:", "new": "def harness_main(env):"}}]},
        {"tool_calls": [{"name": "edit_target", "arguments": {
            "old": "- Never ask questions; nobody will answer.",
            "new": "- Evaluate before and after each training run.\n- Never ask questions; nobody will answer."}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"description": "ask for an evaluation around each training run"}}]},
    ]


class RecordingLLM(ScriptedLLM):
    """The scripted provider, keeping every request it received (system prompt, messages, tools)."""

    def __init__(self, script):
        super().__init__("meta-script", script=script)
        self.requests = []

    def complete(self, messages, *, system=None, tools=None, max_tokens=4096):
        self.requests.append(json.dumps({"system": system, "messages": [vars(m) for m in messages],
                                         "tools": [vars(t) for t in tools or []]}, default=str))
        return super().complete(messages, system=system, tools=tools, max_tokens=max_tokens)


def harness_trial(agent_spec, out, gpu, say, hours=None, tiers=("dev", "validation", "heldout")):
    """A simulated harness trial: the file's MAX_TURNS and prompt decide its quality."""
    source = Path(agent_spec.split(":", 1)[1]).read_text()
    fewer = "MAX_TURNS = 120" in source  # a clear gain (+0.029), beyond the gate's noise at 2 A/A runs
    fake_recipe = editable.set_knobs(RECIPE, {"SYMMETRIC_LOSS": "Evaluate before and after" in source,
                                              "LR": 1e-4 if fewer else 5e-5, "WEIGHT_DEBIAN": 2.0 if fewer else 1.0})
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe_file = out.parent / f"{out.name}-as-recipe.py"
    recipe_file.write_text(fake_recipe)
    return loop_driver.fake_trial(f"recipe:{recipe_file}", out, gpu, say, tiers=tiers)


def scripted_llm_loop(run_dir: Path, llm, trial_hours: float, **hooks):
    """A two-candidate loop on the harness target, its meta-agent the scripted llm, its trials harness_trial and
    fake held-out scores; hooks (e.g. smoke=) replace the real ones."""
    from autoembed.loop.engine import Loop, LoopConfig, LoopHooks

    meta = LLMMetaAgent("scripted:meta-script", run_dir / "meta", llm=llm)
    config = LoopConfig(target="harness", meta=meta.name, task_model="scripted:task", hours=1.0,
                        trial_hours=trial_hours, max_iterations=2, baseline_runs=2, sandbox="none")
    return Loop(run_dir, config, meta, lambda msg: None,
                LoopHooks(trial_runner=harness_trial, heldout_scorer=loop_driver.fake_heldout, **hooks))


def test_the_search_meta_agent_is_told_validation_and_never_heldout(tmp_path):
    """Everything the search meta-agent receives (each proposal's context, each decision's feedback) and its own
    state (Optuna's journal) hold gated scores only: the held-out scores of the baseline and of its kept prior point,
    scored in the same run, appear nowhere in them."""
    from autoembed.loop.meta.search import SearchMetaAgent

    class Recording(SearchMetaAgent):
        def __init__(self, state_dir):
            super().__init__(state_dir)
            self.inputs: list[str] = []
            self.values: list[float] = []

        def propose(self, ctx):
            self.inputs.append(repr(ctx) + ctx.incumbent_source)
            return super().propose(ctx)

        def observe(self, feedback):
            self.inputs.append(repr(feedback))
            self.values += [feedback.value] if feedback.value is not None else []
            super().observe(feedback)

    run_dir = tmp_path / "run"
    meta = Recording(run_dir / "meta")
    assert loop_driver.make_loop(run_dir, 5, meta_agent=meta).run() == 0
    rows = Ledger(run_dir).rows()
    assert any(r["status"] == "keep" and r["kind"] in ("candidate", "rerun") for r in rows), "no held-out beyond the baseline's"
    heldout = Ledger(run_dir).heldout()
    assert len({h["commit"] for h in heldout}) >= 2 and all(h["heldout"]["mean"] < 0.4 for h in heldout)
    gated = [r["validation"]["mean"] for r in rows if r.get("validation")]
    assert gated and all(v > 0.45 for v in gated)  # apart from held-out's band (HELDOUT_MARK, ~0.31): no collisions
    secrets_ = {f"{h['heldout']['mean']:.4f}" for h in heldout} | {repr(h["heldout"]["mean"]) for h in heldout}
    assert len(meta.inputs) >= 5 and len(meta.values) >= 3 and all(v > 0.45 for v in meta.values), meta.values
    journal = (run_dir / "meta" / "optuna.journal").read_text()
    for text in [*meta.inputs, journal]:
        assert not any(secret in text for secret in secrets_), [s for s in secrets_ if s in text]


def test_llm_meta_agent_edits_the_harness_through_its_tools_and_never_sees_heldout(tmp_path):
    llm = RecordingLLM(scripted_meta_script())
    run_dir = tmp_path / "run"
    loop = scripted_llm_loop(run_dir, llm, trial_hours=0.001)  # the real smoke check
    assert loop.run() == 0

    rows = Ledger(run_dir).rows()
    cands = {r["candidate"]: r for r in rows if r.get("candidate")}
    assert cands[1]["description"] == "fewer turns: the agent wastes the last ones"
    assert cands[1]["status"] == "keep" and cands[2]["status"] == "keep", [r["status"] for r in rows]
    repo = TargetRepo.open(run_dir / "view" / "repo", "harness.py")
    best = repo.read(repo.best())
    assert "MAX_TURNS = 120" in best and "Evaluate before and after" in best
    assert editable.adapter_hash(best) == editable.adapter_hash(HARNESS)
    tool_results = [json.loads(r)["messages"] for r in llm.requests]
    texts = json.dumps(tool_results)
    assert "outside the view" in texts, "reading ../config.json was not refused"
    assert "changes the fixed adapter" in texts, "the adapter edit was not refused"
    assert "passed the smoke check; a short trial" in texts and "validation 0." in texts
    assert list((run_dir / "view" / "spot").glob("spot-0001-*/summary.json")), "the spot check's trial is not in the view"
    assert "candidate 1: keep" in texts, "the second iteration was not told how the first went"
    assert "Trials run on a CPU" in texts, "the brief does not say where trials run"
    assert (run_dir / "view" / "notes.md").read_text() == "tried fewer turns"

    # no held-out number or text in anything the meta-agent received, nor in its view folder
    heldout = Ledger(run_dir).heldout()
    assert heldout, "the simulated trials wrote held-out scores"
    secrets_ = {"heldout_secret"} | {f"{h['heldout']['mean']:.4f}" for h in heldout} | {repr(h["heldout"]["mean"]) for h in heldout}
    for request in llm.requests:
        for secret in secrets_:
            assert secret not in request, f"held-out ({secret}) reached the meta-agent"
    for path in (run_dir / "view").rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets_), f"held-out ({path}) is in the meta-agent's view"
    logged = (run_dir / "meta" / "requests.jsonl").read_text()
    assert not any(s in logged for s in secrets_)


def test_resume_refuses_another_target(tmp_path):
    from autoembed.cli import main

    loop_driver.make_loop(tmp_path / "run", 1).run()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"target": "recipe", "meta": "search"}))
    assert main(["loop", "--resume", str(tmp_path / "run"), "--target", "harness"]) == 2


def test_bad_options_are_one_line_and_exit_2(capsys):
    from autoembed.cli import main

    assert main(["loop", "--hours", "0.01", "--trial-hours", "0.5"]) == 2
    assert "no trial fits" in capsys.readouterr().err
    assert main(["loop", "--meta", "nosuchprovider:x"]) == 2
    capsys.readouterr()
    assert main(["loop", "--meta", "nosuchmeta"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search" in err and "provider:model" in err and "anthropic" in err, err
    assert main(["report", "/nonexistent/run"]) == 2


def test_meta_agent_llm_is_built_from_a_gateway_url_and_token(monkeypatch):
    from autoembed.loop.meta.llm_agent import make_llm

    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    llm = make_llm("anthropic:claude-x", base_url="http://127.0.0.1:8765", token="trial-token-123")
    assert str(llm.client.base_url).startswith("http://127.0.0.1:8765") and llm.client.api_key == "trial-token-123"
    llm = make_llm("openai:gpt-x", base_url="http://127.0.0.1:8765/v1", token="trial-token-123")
    assert str(llm.client.base_url).startswith("http://127.0.0.1:8765/v1") and llm.client.api_key == "trial-token-123"


def test_report_writes_the_plot_and_a_summary_from_the_ledger(tmp_path):
    from autoembed.loop.report import report

    loop_driver.make_loop(tmp_path / "run", 5).run()
    lines = []
    summary = report(tmp_path / "run", out=lines.append)
    png = (tmp_path / "run" / "progress.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    rows = Ledger(tmp_path / "run").rows()
    assert summary["trials"] == sum(1 for r in rows if r["trial_id"]) and summary["candidates"] == 5
    assert summary["baseline"]["runs"] == 2 and summary["best"]["heldout"] is not None
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "| baseline |" in text and "| best |" in text
    # A/A and re-measure rows are the incumbent's runs, never counted as keeps
    gated = [r for r in rows if r["kind"] in ("candidate", "rerun")]
    assert sum(summary["statuses"].values()) == len(gated)
    assert summary["statuses"].get("keep", 0) == sum(1 for r in gated if r["status"] == "keep")
    assert summary["incumbent_runs"]["baseline"] == {"scored": 2} and "baseline A/A scored 2" in text
    assert not summary["interruptions"] and not summary["never_scored"] and "Interruptions" not in text
    assert lines[0].startswith("row_id\t") and len(lines[0].splitlines()) == len(rows) + 1
    # the plot's held-out points are the table's: each step's mean over all its commit's scored runs
    from autoembed.loop.report import heldout_line

    heldout = {h["row_id"]: h for h in Ledger(tmp_path / "run").heldout()}
    scored = [r for r in rows if r.get("gate_value") is not None]
    kept = [r for r in scored if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
    points = dict(heldout_line(scored, kept, heldout))
    assert points[0] == pytest.approx(summary["baseline"]["heldout"])
    if kept:
        assert points[kept[-1]["iteration"]] == pytest.approx(summary["best"]["heldout"])


@pytest.mark.slow
def test_offline_loop_end_to_end_with_real_training(tmp_path_factory, tmp_path):
    """The issue's offline command, shrunk: the search meta-agent on the recipe, real (tiny) CPU training and
    sealed scoring (held-out only for the baseline, and for the candidate only if it is kept), then the report.
    One candidate is enough to show a real commit kept or reverted; the session's harness-side home is shared,
    so the scorer's one-time preparation for the tiny task is paid once per test session.
    Runs with -m slow (several minutes on 2 cores): CI runs a real loop of the same kind in `autoembed audit` (its
    clean-loop and loop-killed rows), and the default suite keeps the loop's simulated-trial tests."""
    from tests.tiny_task import shared_tiny_task

    base = tmp_path_factory.getbasetemp()
    task = shared_tiny_task(base)
    run_dir = tmp_path / "loop"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AUTOEMBED_TRACES": str(tmp_path / "traces"),
           "AUTOEMBED_HOME": str(base / "autoembed_home")}
    proc = subprocess.run([sys.executable, "-m", "autoembed.loop", "--hours", "0.4", "--trial-hours", "0.025",
                           "--task", str(task), "--sandbox", "none", "--max-iterations", "1", "--out", str(run_dir)],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = check_consistent(run_dir, 1)
    # two A/A runs, the CPU default since one run could not show that it ran slow (tests/test_gate_noise.py)
    assert [r["kind"] for r in rows if r["trial_id"]][:2] == ["baseline", "baseline"]
    assert json.loads((run_dir / "config.json").read_text())["baseline_runs"] == 2
    assert all(r["status"] != "crash" for r in rows), [r["reason"] for r in rows]
    trials = [r for r in rows if r["trial_id"]]
    assert len(trials) >= 3 and all(r["gate_value"] is not None for r in trials)
    heldout = {h["row_id"] for h in Ledger(run_dir).heldout()}
    incumbents = {r["commit"] for r in rows if r["status"] == "keep"}
    assert heldout == {r["row_id"] for r in trials if r["commit"] in incumbents} and trials[0]["row_id"] in heldout
    assert (run_dir / "progress.png").is_file() and (run_dir / "summary.md").is_file()
    meta = json.loads((run_dir / "trials" / trials[-1]["trial_id"] / "meta.json").read_text())
    assert meta["exit_reason"] == "finished" and meta["agent"].startswith("recipe:")
    phases = [json.loads(line) for line in (run_dir / "intents.jsonl").read_text().splitlines()][-1]["phases"]
    assert phases["trials"] > 0 and phases["wall"] >= phases["trials"]


class CostlyMeta(ScriptedMeta):
    """Each proposal costs $1 of (pretend) LLM calls."""

    def __init__(self, files):
        super().__init__(files)
        self.spent = 0.0

    def propose(self, ctx):
        self.spent += 1.0
        return super().propose(ctx)

    @property
    def usage(self):
        return {"input_tokens": 1000 * int(self.spent), "output_tokens": 0, "cost_usd": self.spent}


def test_max_cost_stops_the_loop_and_costs_are_in_the_ledger(tmp_path):
    files = [(editable.set_knobs(RECIPE, {"SCALE": float(s)}), f"scale {s}") for s in range(10, 20)]
    meta = CostlyMeta(files)
    loop = loop_driver.make_loop(tmp_path / "run", 10, meta_agent=meta)
    loop.config.max_cost = 3.0
    assert loop.run() == 0
    rows = Ledger(tmp_path / "run").rows()
    assert len(loop.candidates()) == 3 and loop.total_cost() == pytest.approx(3.0)
    firsts = [r for r in rows if r["kind"] == "candidate"]
    assert [r["meta_cost_usd"] for r in firsts] == [1.0, 1.0, 1.0] and all(r["meta_tokens"] == 1000 for r in firsts)
    stop = [json.loads(line) for line in (tmp_path / "run" / "intents.jsonl").read_text().splitlines()][-1]
    assert stop["op"] == "session" and "max-cost" in stop["reason"]


def test_a_crashed_trial_is_recorded_with_its_reason_and_the_loop_goes_on(tmp_path):
    crashing = RECIPE.replace("LOG_EVERY_S = 10.0", "LOG_EVERY_S = 10.0  # CRASH_IN_TRIAL")
    better = editable.set_knobs(RECIPE, {"SYMMETRIC_LOSS": True})
    meta = ScriptedMeta([(crashing, "dies on the GPU"), (better, "symmetric loss")])
    loop = loop_driver.make_loop(tmp_path / "run", 2, meta_agent=meta)
    assert loop.run() == 0
    rows = check_consistent(tmp_path / "run", 2)
    crash = next(r for r in rows if r.get("candidate") == 1)
    assert crash["status"] == "crash" and "CUDA out of memory" in crash["reason"] and not crash.get("interrupted")
    assert next(r for r in rows if r.get("candidate") == 2)["status"] == "keep"
    assert meta.told[0].status == "crash" and meta.told[0].value is None


def test_a_trial_stopped_while_scoring_counts_as_interrupted_not_as_a_crash_of_its_file():
    from autoembed.loop.jobs import was_interrupted

    assert was_interrupted({"status": "interrupted_while_scoring", "exit_reason": "finished"})  # SIGTERM during scoring
    assert was_interrupted({"status": "interrupted_while_preparing", "exit_reason": "interrupted"})
    assert not was_interrupted({"status": "scored", "exit_reason": "crashed"})


def interrupted_trial(agent_spec, out, gpu, say, hours=None, tiers=("dev", "validation", "heldout")):
    """A trial stopped by SIGTERM while it was being scored: no score.json."""
    out.mkdir(parents=True)
    meta = {"status": "interrupted_while_scoring", "exit_reason": "finished"}
    (out / "meta.json").write_text(json.dumps(meta))
    return loop_driver.FakeResult(out, meta, None)


def test_a_loop_stopped_in_its_baseline_and_resumed_with_no_time_says_nothing_was_scored(tmp_path):
    from autoembed.loop.report import report

    run_dir = tmp_path / "run"
    loop = loop_driver.make_loop(run_dir, 2)
    loop.trial_runner = interrupted_trial
    assert loop.run() == 130
    [row] = Ledger(run_dir).rows()
    assert row["reason"] == "no score (interrupted_while_scoring)" and row["interrupted"]
    said = []
    again = loop_driver.make_loop(run_dir, 2, say=said.append)
    again.config.hours = 1e-5  # its time spent: no trial fits
    assert again.run() == 1
    resumed = [line for line in said if line.startswith("resume:")]
    assert len(resumed) == 1 and "no trial of this loop has been scored" in resumed[0], said
    assert "interrupted at" in resumed[0] and "trial-0001 (baseline)" in resumed[0]
    assert not any("best commit" in line and line.startswith("done") for line in said), said
    lines = []
    summary = report(run_dir, out=lines.append)
    assert not (run_dir / "progress.png").exists(), "no empty axes"
    assert any("no trial of this loop was scored" in line for line in lines)
    [cut] = summary["interruptions"]
    assert cut["how"] == "interrupted" and cut["phase"] == "trials" and cut["time"]
    assert cut["trials"] == [{"trial_id": "trial-0001", "kind": "baseline", "candidate": None}]
    assert [n["what"] for n in summary["never_scored"]] == ["the baseline"]
    text = (run_dir / "summary.md").read_text()
    assert f"interrupted at {cut['time']}, during trial-0001 (baseline)" in text
    assert "never scored: the baseline (trial-0001)" in text and "No trial of this loop was scored" in text
    assert "| best |" not in text and "progress.png)" not in text


def test_a_killed_session_and_an_unrun_candidate_are_in_the_story():
    from autoembed.loop.report import interruptions, never_scored

    intents = [{"op": "session", "event": "start", "time": "t0"},
               {"op": "trial", "trial_id": "trial-0001", "kind": "baseline", "candidate": None, "time": "t1"},
               {"op": "candidate", "id": 1, "commit": "abc", "description": "lr", "time": "t2"},
               {"op": "session", "event": "start", "time": "t3"},
               {"op": "session", "event": "stop", "reason": "interrupted", "phase": "propose", "trials": [], "time": "t4"}]
    rows = [{"row_id": "trial-0001", "trial_id": "trial-0001", "kind": "baseline", "candidate": None, "commit": "base",
             "status": "crash", "interrupted": True, "reason": "the loop stopped during this trial (running)"}]
    killed, stopped = interruptions(intents, rows)
    assert killed == {"time": "t2", "how": "killed", "phase": "trials",
                      "trials": [{"trial_id": "trial-0001", "kind": "baseline", "candidate": None}]}
    assert stopped == {"time": "t4", "how": "interrupted", "phase": "propose", "trials": []}
    assert [(n["what"], n["why"]) for n in never_scored(intents, rows)] == [
        ("the baseline", "the loop stopped during this trial (running)"), ("candidate 1", "proposed, never run")]
    before_resume = never_scored(intents, [])[0]  # killed, not resumed yet: the trial intent, no row
    assert before_resume["trials"] == ["trial-0001"] and before_resume["why"].startswith("begun, not recorded yet")


def test_a_no_score_reason_has_no_empty_colon():
    from autoembed.loop.jobs import LoadedResult, trial_problem

    cut = {"status": "interrupted_while_scoring", "exit_reason": "finished"}
    assert trial_problem(LoadedResult(Path("."), cut, None)) == "no score (interrupted_while_scoring)"
    failed = {"status": "score_failed", "exit_reason": "finished", "score_error": "Traceback\nValueError: bad shape\n"}
    assert trial_problem(LoadedResult(Path("."), failed, None)) == "no score (score_failed): ValueError: bad shape"


class CtrlCMeta(ScriptedMeta):
    """Ctrl-C reaches the loop while it asks for its second proposal."""

    def propose(self, ctx):
        if len(self.files) == 1:
            raise KeyboardInterrupt
        return super().propose(ctx)


def test_a_ctrl_c_while_proposing_is_named_in_the_stop_record_and_the_report(tmp_path):
    from autoembed.loop.report import report

    files = [(editable.set_knobs(RECIPE, {"SYMMETRIC_LOSS": True}), "symmetric"), (RECIPE, "never proposed")]
    loop = loop_driver.make_loop(tmp_path / "run", 2, meta_agent=CtrlCMeta(files))
    assert loop.run() == 130
    stop = [json.loads(line) for line in (tmp_path / "run" / "intents.jsonl").read_text().splitlines()][-1]
    assert (stop["reason"], stop["phase"], stop["trials"]) == ("interrupted", "propose", [])
    summary = report(tmp_path / "run", out=lambda text: None)
    assert summary["interruptions"] == [{"time": stop["time"], "how": "interrupted", "phase": "propose", "trials": []}]
    assert summary["scored_trials"] == 3 and not summary["never_scored"]
    text = (tmp_path / "run" / "summary.md").read_text()
    assert f"the loop was interrupted at {stop['time']}, while the meta-agent proposed" in text
    assert (tmp_path / "run" / "progress.png").is_file()
