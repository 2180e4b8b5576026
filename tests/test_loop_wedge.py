"""A loop nothing wedges (issue 18): every attack here once stopped the loop, or every --resume after it.

Candidates built to break the loop's own code (a 3,000-term sum that overflows the compiler's recursion limit,
deep nesting, 2 MB, binary, NUL bytes, invalid UTF-8, a broken banner) each become that candidate's row, and the
loop goes on, also when it was killed with the poison pending; gating and held-out scoring that raise are
recorded, not fatal; a proposal that raises is a crash row; one loop per run folder; the meta-agent's tools are
bounded in time and size; spot checks count toward --max-cost and a harness's own usage report never does.
Trials are simulated (tests/loop_driver.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoembed import editable
from autoembed.loop.ledger import Ledger
from autoembed.llm.scripted import ScriptedLLM
from autoembed.loop.meta.base import MetaAgent, Proposal
from autoembed.loop.meta.llm_agent import LLMMetaAgent, View
from autoembed.paths import REPO_ROOT
from tests import loop_driver
from tests.loop_driver import FilesMeta, fuzz_files, inprocess_smoke, poison, quick_smoke
from tests.test_loop import check_consistent

RECIPE = (REPO_ROOT / "harnesses" / "recipe.py").read_text()
HARNESS = (REPO_ROOT / "harnesses" / "baseline.py").read_text()
GOOD = editable.set_knobs(RECIPE, {"SYMMETRIC_LOSS": True, "LR": 1e-4})
SMOKES = {"in-process-compile": inprocess_smoke, "static-check": quick_smoke}


def by_candidate(run_dir: Path) -> dict[int, dict]:
    """Each candidate's last row."""
    return {r["candidate"]: r for r in Ledger(run_dir).rows() if r.get("candidate")}


@pytest.mark.parametrize("smoke", SMOKES.values(), ids=SMOKES.keys())
def test_the_poison_candidate_is_recorded_invalid_and_the_loop_goes_on(tmp_path, smoke):
    """in-process-compile: the smoke check as it was (compile() in the loop's process raises RecursionError out of
    it), which the loop must contain; static-check: the check as it is (compiled in a child, the error named)."""
    meta = FilesMeta([(poison(RECIPE), "poison"), (GOOD, "good")])
    loop = loop_driver.make_loop(tmp_path / "run", 2, meta_agent=meta, smoke=smoke)
    assert loop.run() == 0
    check_consistent(tmp_path / "run", 2)
    rows = by_candidate(tmp_path / "run")
    assert rows[1]["status"] == "invalid" and "RecursionError" in rows[1]["reason"] and rows[1]["trial_id"] is None
    assert rows[2]["status"] == "keep", rows[2]
    assert meta.told[0].status == "invalid" and "RecursionError" in meta.told[0].message


@pytest.mark.parametrize("smoke", SMOKES.values(), ids=SMOKES.keys())
def test_fuzz_candidates_each_become_a_row_and_the_loop_goes_on(tmp_path, smoke):
    files = fuzz_files()
    loop = loop_driver.make_loop(tmp_path / "run", len(files), meta_agent=FilesMeta(files), smoke=smoke)
    started = time.time()
    assert loop.run() == 0
    assert time.time() - started < 60
    check_consistent(tmp_path / "run", len(files))
    rows = by_candidate(tmp_path / "run")
    seen = {n: (files[n - 1][1], r["status"], r["reason"][:120]) for n, r in rows.items()}
    assert [rows[n]["status"] for n in range(1, len(files))] == ["invalid"] * (len(files) - 1), seen
    assert all(rows[n]["trial_id"] is None and rows[n]["reason"] for n in range(1, len(files))), seen
    assert rows[len(files)]["status"] == "keep", seen
    assert "256 KB" in rows[5]["reason"] and "UTF-8" in rows[8]["reason"], seen  # named, not a bare exception


def test_a_resume_after_a_kill_with_the_poison_pending_goes_on(tmp_path):
    """The wedge as reported: the loop is killed with the poison candidate committed and not yet checked; the
    resume checks it (compile() raising RecursionError in the loop's process), records it, and goes on."""
    run_dir = tmp_path / "run"
    files = fuzz_files()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.loop_driver", str(run_dir), "--fuzz", "--smoke", "inprocess",
                           "--kill-at", "intent", "--kill-after", "1", "--iterations", str(len(files))],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not Ledger(run_dir).rows() or not by_candidate(run_dir), "the poison was decided before the kill"
    for _ in range(2):  # the resume, and a resume of the finished run
        loop = loop_driver.make_loop(run_dir, len(files), meta_agent=FilesMeta(files), smoke=inprocess_smoke)
        assert loop.run() == 0
    check_consistent(run_dir, len(files))
    rows = by_candidate(run_dir)
    assert rows[1]["status"] == "invalid" and "RecursionError" in rows[1]["reason"]
    assert rows[len(files)]["status"] == "keep"


def test_gating_and_heldout_scoring_that_raise_are_recorded_and_the_loop_goes_on(tmp_path):
    """A trial whose per-query file is not gzip makes the gate raise: that trial's crash row. The held-out scoring of
    a kept commit raises: heldout.jsonl says so for that run, and neither the loop nor a resume stops."""
    bad_gate = editable.set_knobs(RECIPE, {"SCALE": 30.0}).replace("LOG_EVERY_S = 10.0", "LOG_EVERY_S = 10.0  # BAD_GATE")
    meta = FilesMeta([(bad_gate, "per-query file damaged"), (GOOD, "good")])
    loop = loop_driver.make_loop(tmp_path / "run", 2, meta_agent=meta)
    runner = loop.trial_runner

    def trial(agent_spec, out, gpu, say, hours=None, tiers=("dev", "validation", "heldout")):
        result = runner(agent_spec, out, gpu, say, hours, tiers)
        if "BAD_GATE" in Path(agent_spec.split(":", 1)[1]).read_text():
            (Path(out) / "per_query.json.gz").write_bytes(b"not gzip at all")
        return result

    def heldout(trial_dir, gpu, say):
        raise RecursionError("maximum recursion depth exceeded (a scorer failing on a kept commit)")

    loop.trial_runner, loop.heldout_scorer = trial, heldout
    assert loop.run() == 0
    rows = by_candidate(tmp_path / "run")
    assert rows[1]["status"] == "crash" and "BadGzipFile" in rows[1]["reason"] and rows[1]["trial_id"], rows[1]
    assert rows[2]["status"] == "keep"
    kept_row = rows[2]["row_id"]
    entry = next(h for h in Ledger(tmp_path / "run").heldout() if h["row_id"] == kept_row)
    assert entry["heldout"] is None and "RecursionError" in entry["error"]
    assert loop_driver.make_loop(tmp_path / "run", 2, meta_agent=meta).run() == 0  # the resume goes on too
    check_consistent(tmp_path / "run", 2)


class RaisingMeta(FilesMeta):
    """Raises at the iterations given, proposes its files at the others."""

    def __init__(self, files, raise_at):
        super().__init__(files)
        self.raise_at = set(raise_at)

    def propose(self, ctx):
        if ctx.iteration in self.raise_at:
            raise RecursionError("maximum recursion depth exceeded while building the proposal")
        return super().propose(ctx)


def test_a_proposal_that_raises_is_a_crash_row_and_three_in_a_row_stop_the_loop(tmp_path):
    from autoembed.loop.jobs import LoopError

    scale = [(editable.set_knobs(RECIPE, {"SCALE": float(s)}), f"scale {s}") for s in (15, 25, 35)]
    meta = RaisingMeta([scale[0], (None, None), (GOOD, "good")], raise_at={2})
    loop = loop_driver.make_loop(tmp_path / "run", 3, meta_agent=meta)
    assert loop.run() == 0
    check_consistent(tmp_path / "run", 3)
    rows = by_candidate(tmp_path / "run")
    assert rows[2]["status"] == "crash" and "RecursionError" in rows[2]["reason"] and rows[2]["trial_id"] is None
    assert rows[3]["status"] == "keep"
    assert loop.candidates()[2]["failed"] and "proposal failed" in rows[2]["description"]

    always = RaisingMeta([], raise_at=range(1, 100))
    loop = loop_driver.make_loop(tmp_path / "run2", 10, meta_agent=always)
    with pytest.raises(LoopError, match="last 3 proposals failed"):
        loop.run()
    assert [r["status"] for r in by_candidate(tmp_path / "run2").values()] == ["crash"] * 3


def test_a_proposal_git_cannot_commit_is_a_crash_row_on_the_incumbents_file(tmp_path):
    refused = RECIPE.replace("LOG_EVERY_S = 10.0", "LOG_EVERY_S = 10.0  # GIT_REFUSES")
    meta = FilesMeta([(refused, "git refuses it"), (GOOD, "good")])
    loop = loop_driver.make_loop(tmp_path / "run", 2, meta_agent=meta)
    add = loop.repo.add_candidate

    def add_candidate(number, source, description, parent):
        if "GIT_REFUSES" in source:
            raise ValueError("embedded null byte")
        return add(number, source, description, parent)

    loop.repo.add_candidate = add_candidate
    assert loop.run() == 0
    check_consistent(tmp_path / "run", 2)
    rows = by_candidate(tmp_path / "run")
    assert rows[1]["status"] == "crash" and "committing the proposal raised ValueError" in rows[1]["reason"]
    assert loop.repo.read(loop.candidates()[1]["commit"]) == RECIPE and rows[2]["status"] == "keep"


# -- one loop per run folder -----------------------------------------------------------------------


def test_a_second_loop_on_the_same_run_folder_exits_2_naming_the_first(tmp_path):
    """Two real processes: a loop holds the folder (its trial sleeps); `autoembed loop --resume` on the same
    folder exits 2 at once with one line naming the other's pid and the folder, and writes nothing there."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AUTOEMBED_TRACES": str(tmp_path / "traces")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in a trial", "the first loop did not start"
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
        second = subprocess.run([sys.executable, "-m", "autoembed.loop", "--resume", str(run_dir)], cwd=REPO_ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        line = [ln for ln in second.stderr.splitlines() if "error" in ln]
        assert len(line) == 1 and f"pid {holder.pid}" in line[0] and str(run_dir) in line[0], second.stderr
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before, "the second wrote"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the killed loop's lock died with it: a resume takes the folder
    assert loop_driver.make_loop(run_dir, 1).run() == 0
    check_consistent(run_dir, 1)


# the first loop: a simulated loop whose first trial says so, then sleeps (killed by the test)
HOLDER = """
import sys, time
from pathlib import Path
from tests import loop_driver

loop = loop_driver.make_loop(Path(sys.argv[1]), 1)
runner = loop.trial_runner

def trial(*args, **kwargs):
    print("in a trial", flush=True)
    time.sleep(120)
    return runner(*args, **kwargs)

loop.trial_runner = trial
loop.run()
"""


def test_a_second_loop_object_in_one_process_is_refused_until_the_first_closes(tmp_path):
    from autoembed.loop.engine import RunFolderBusy

    first = loop_driver.make_loop(tmp_path / "run", 1)
    with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()}"):
        loop_driver.make_loop(tmp_path / "run", 1)
    first.close()
    assert loop_driver.make_loop(tmp_path / "run", 1).run() == 0


# -- spend: spot checks count, a harness's own report never does ------------------------------------


class SpotCheckingMeta(FilesMeta):
    """Spot-checks each file before proposing it, as an LLM meta-agent's tool does."""

    def propose(self, ctx):
        proposal = super().propose(ctx)
        if proposal is not None:
            self.spot = ctx.spot_check(proposal.source)
        return proposal


def test_spot_checks_count_toward_max_cost_and_a_reported_negative_cost_does_not(tmp_path):
    """Every trial's harness reports `cost_usd: -1000` of its own (no gateway call: the agent's report is what a
    trial's meta "usage" then holds); each spot check's gateway counts $0.75. With --max-cost 1 the loop stops
    after the second spot check, and no row's cost is negative."""
    files = [(editable.set_knobs(RECIPE, {"SCALE": float(s)}), f"scale {s}") for s in (15, 25, 35, 45)]
    meta = SpotCheckingMeta(files)
    loop = loop_driver.make_loop(tmp_path / "run", 4, meta_agent=meta)
    loop.config.max_cost = 1.0
    runner = loop.trial_runner

    def trial(agent_spec, out, gpu, say, hours=None, tiers=("dev", "validation", "heldout")):
        result = runner(agent_spec, out, gpu, say, hours, tiers)
        spot = Path(out).parent.name == "spot"
        result.meta["usage"] = {"input_tokens": 10, "output_tokens": 10, "cost_usd": -1000.0}  # the harness's word
        result.meta["usage_source"] = "agent"
        result.meta["gateway"] = {"calls": 3, "usage": {"input_tokens": 5000, "output_tokens": 500, "cost_usd": 0.75}} \
            if spot else None
        (Path(out) / "meta.json").write_text(json.dumps(result.meta))
        return result

    loop.trial_runner = trial
    assert loop.run() == 0
    assert "passed the smoke check; a short trial" in meta.spot
    spots = [i for i in loop.intents() if i["op"] == "spot"]
    assert len(spots) == 2 and loop.spot_cost() == pytest.approx(1.5) and loop.total_cost() == pytest.approx(1.5)
    rows = Ledger(tmp_path / "run").rows()
    assert all((r.get("trial_cost_usd") or 0.0) == 0.0 and (r.get("cost_usd") or 0.0) >= 0 for r in rows)
    stop = [json.loads(line) for line in (tmp_path / "run" / "intents.jsonl").read_text().splitlines()][-1]
    assert "max-cost" in stop["reason"], stop
    from autoembed.loop.report import report

    lines = []
    summary = report(tmp_path / "run", out=lines.append)
    assert summary["llm"]["spot_checks"] == {"count": 2, "cost_usd": pytest.approx(1.5)}
    assert summary["cost_usd"] == pytest.approx(1.5) and any("2 spot checks: $1.5000" in line for line in lines), lines


def test_max_cost_binds_across_trials_side_by_side(tmp_path, monkeypatch):
    """Each task-model trial gets as its dollar cap what --max-cost leaves after the spend so far and what the
    trials beside it hold (at most the task's own cap), so two trials side by side that each spend their whole cap
    cannot pass --max-cost together, and the meta-agent's gateway is capped at what is left. Before, a trial's cap
    was the task's alone and --max-cost was checked between batches: 2 baselines and 2 candidates of $0.40 spent
    $1.60 of a $1 --max-cost."""
    from autoembed.loop.config import Target

    monkeypatch.setattr(Target, "uses_task_model", property(lambda self: True))
    files = [(editable.set_knobs(RECIPE, {"SCALE": float(s)}), f"scale {s}") for s in (12, 18, 24, 30, 36, 42)]
    loop = loop_driver.make_loop(tmp_path / "run", 6, meta_agent=FilesMeta(files), gpus=["0", "1"])
    loop.config.max_cost = 1.0
    loop.__dict__["_task_usd"] = 0.4  # the task's own [budget] usd per trial
    runner, caps, lock = loop.trial_runner, [], __import__("threading").Lock()

    def trial(agent_spec, out, gpu, say, hours=None, tiers=("dev", "validation", "heldout"), max_usd=None):
        with lock:
            caps.append(max_usd)
            assert loop.total_cost() + loop.held_usd() <= 1.0 + 1e-9, "what is spent and held passed --max-cost"
        result = runner(agent_spec, out, gpu, say, hours, tiers)
        spent = 0.4 if max_usd is None else max_usd  # a trial that spends its whole cap
        result.meta["gateway"] = {"calls": 1, "usage": {"input_tokens": 10, "output_tokens": 10, "cost_usd": spent}}
        (Path(out) / "meta.json").write_text(json.dumps(result.meta))
        return result

    loop.trial_runner = trial
    loop._runner_caps = True
    assert loop.run() == 0
    assert loop.total_cost() <= 1.0 + 1e-9 and loop.held_usd() == 0.0
    assert caps[:2] == [pytest.approx(0.4), pytest.approx(0.4)] and pytest.approx(0.2) in caps, caps
    stop = [json.loads(line) for line in (tmp_path / "run" / "intents.jsonl").read_text().splitlines()][-1]
    assert "max-cost" in stop["reason"], stop


def test_a_spot_trial_cut_off_counts_what_its_gateway_logged(tmp_path):
    from autoembed.loop.spend import spot_trial_cost

    spot = tmp_path / "spot-0001-abcd"
    spot.mkdir()
    (spot / "meta.json").write_text(json.dumps({"status": "running"}))  # killed before the trial wrote its usage
    rows = [{"model": "m", "usage": {"input_tokens": 1, "output_tokens": 1, "cost_usd": 0.25}},
            {"model": "m", "usage": {"input_tokens": 1, "output_tokens": 1, "cost_usd": 0.5}}]
    (spot / "gateway.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert spot_trial_cost(spot) == pytest.approx(0.75)


# -- the LLM meta-agent's tools: bounded in time and size -------------------------------------------


def make_view(tmp_path: Path, target: str = HARNESS) -> View:
    (tmp_path / "view" / "repo").mkdir(parents=True)
    (tmp_path / "view" / "repo" / "harness.py").write_text(target)
    return View(tmp_path / "view")


@pytest.mark.timeout(120)
def test_grep_with_a_catastrophic_regex_returns_at_once(tmp_path):
    """(a+)+$ against 40 a's and a '!' backtracks 2^40 times in Python's re; RE2 is linear."""
    view = make_view(tmp_path)
    (tmp_path / "view" / "notes.md").write_text("a" * 40 + "!\n" + "b" * 1_000_000 + "\n")
    started = time.perf_counter()
    assert view.grep("(a+)+$", ".") == "no matches"
    assert view.grep("(x+x+)+y", "notes.md") == "no matches"
    assert time.perf_counter() - started < 2.0
    assert "MAX_TURNS" in view.grep("MAX_TURNS", "repo")  # positive control
    with pytest.raises(ValueError, match="RE2"):
        view.grep("(a)\\1")
    (tmp_path / "view" / "trials").mkdir()
    with open(tmp_path / "view" / "trials" / "agent.log", "w") as fh:  # 40 MB on one line: read in pieces, then cut
        for _ in range(40):
            fh.write("c" * 2**20)
    assert "stopped after 32 MB" in view.grep("zzz", "trials")


def test_an_edit_over_the_size_cap_is_refused_with_the_cap_named(tmp_path):
    view = make_view(tmp_path)
    before = view.target.read_text()
    with pytest.raises(editable.EditableError, match="256 KB"):
        view.edit_target("MAX_TURNS = 200", "MAX_TURNS = 200\n# " + "x" * 2_000_000)
    assert view.target.read_text() == before, "the refused edit changed the file"
    with pytest.raises(ValueError, match="UTF-8"):
        view.edit_target("MAX_TURNS = 200", "MAX_TURNS = 200  # \udcff")
    with pytest.raises(ValueError, match="cap"):
        view.write_notes("n" * 1_000_000)
    assert view.edit_target("MAX_TURNS = 200", "MAX_TURNS = 120") == "edited repo/harness.py"


class SlowToolLLM(ScriptedLLM):
    """A meta-agent's model that never finishes: it calls grep turn after turn, 50 ms a turn."""

    def __init__(self):
        super().__init__("meta-script", script=[{"tool_calls": [{"name": "grep", "arguments": {"pattern": "x"}}]}])

    def complete(self, messages, *, system=None, tools=None, max_tokens=4096):
        time.sleep(0.05)
        self.script = [{"tool_calls": [{"name": "grep", "arguments": {"pattern": "MAX_TURNS"}}]}]
        return super().complete(messages, system=system, tools=tools, max_tokens=max_tokens)


def test_hours_are_checked_during_a_proposal(tmp_path):
    """The loop's --hours end mid-proposal: the meta-agent stops at the deadline and the loop ends on time,
    instead of after its 10,000 turns (over 8 minutes)."""
    from autoembed.loop.engine import Loop, LoopConfig, LoopHooks
    from tests.test_loop import harness_trial

    meta = LLMMetaAgent("scripted:meta-script", tmp_path / "run" / "meta", llm=SlowToolLLM(), max_turns=10_000)
    hours = 0.0015  # 5.4 s
    config = LoopConfig(target="harness", meta=meta.name, task_model="scripted:task", hours=hours, trial_hours=0.0001,
                        max_iterations=2, baseline_runs=1, sandbox="none")
    loop = Loop(tmp_path / "run", config, meta, lambda msg: None,
                LoopHooks(trial_runner=harness_trial, heldout_scorer=loop_driver.fake_heldout))
    started = time.time()
    assert loop.run() == 0
    assert time.time() - started < hours * 3600 + 3, "the loop ran past --hours"
    assert not loop.candidates(), "a proposal cut off by the deadline became a candidate"
    stop = [json.loads(line) for line in (tmp_path / "run" / "intents.jsonl").read_text().splitlines()][-1]
    assert "budget" in stop["reason"], stop


class ReadingLLM(ScriptedLLM):
    """30 turns of reading the target file (5 KB a turn), then finish; the log's size seen at each turn."""

    def __init__(self, log: Path, turns: int):
        steps = [{"tool_calls": [{"name": "read_file", "arguments": {"path": "repo/harness.py"}}]}] * (turns - 1)
        super().__init__("meta-script", script=steps + [{"tool_calls": [{"name": "finish", "arguments": {
            "description": "read it all"}}]}])
        self.log, self.sizes = log, []

    def complete(self, messages, **kwargs):
        self.sizes.append(self.log.stat().st_size)
        return super().complete(messages, **kwargs)


def test_the_meta_agents_request_log_grows_linearly_over_30_turns(tmp_path):
    view = make_view(tmp_path)
    llm = ReadingLLM(tmp_path / "meta" / "requests.jsonl", 30)
    meta = LLMMetaAgent("scripted:meta-script", tmp_path / "meta", llm=llm)
    from autoembed.loop.meta.base import ProposeContext

    proposal = meta.propose(ProposeContext(1, view.target.read_text(), view.root))
    assert proposal.description == "read it all"
    steps = [b - a for a, b in zip(llm.sizes, llm.sizes[1:])]
    chunk = len(json.dumps(HARNESS))
    assert len(steps) == 29 and all(step < 2 * chunk for step in steps), steps  # each turn adds its new messages
    total = (tmp_path / "meta" / "requests.jsonl").stat().st_size
    assert total < 31 * 2 * chunk, total  # the whole conversation repeated each turn: about 15x this
    records = [json.loads(line) for line in (tmp_path / "meta" / "requests.jsonl").read_text().splitlines()]
    messages = [m for r in records for m in r["messages"]]
    assert len(messages) == 1 + 2 * 30 and records[0]["system"], "the log does not hold the whole conversation"
