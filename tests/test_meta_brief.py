"""The meta-agent's brief: one hypothesis per candidate recorded in the ledger and told back, the trial budget and
goal metric stated, and view/api.md generated from the code the target file runs against."""

from __future__ import annotations

import inspect
import json
import re

from autoembed.agents.harness_runtime import HarnessEnv
from autoembed.loop.config import TARGETS
from autoembed.loop.ledger import Ledger
from autoembed.loop.meta.llm_agent import LLMMetaAgent
from autoembed.loop.recording import api_doc
from autoembed.loop.smoke import SmokeResult
from tests import loop_driver
from tests.test_loop import RecordingLLM, scripted_llm_loop

HYPOTHESIS = "fewer turns leave time to save final_model/ before the deadline"
LONG = "line one\nline two\t" + "x" * 10_000


def script() -> list[dict]:
    return [
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "api.md"}}]},
        {"tool_calls": [{"name": "edit_target", "arguments": {"old": "MAX_TURNS = 200", "new": "MAX_TURNS = 120"}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"hypothesis": HYPOTHESIS, "description": "MAX_TURNS 120"}}]},
        {"tool_calls": [{"name": "edit_target", "arguments": {
            "old": "- Never ask questions; nobody will answer.",
            "new": "- Evaluate before and after each training run.\n- Never ask questions; nobody will answer."}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"hypothesis": LONG, "description": "evaluate around training"}}]},
    ]


def test_the_hypothesis_reaches_the_ledger_the_view_and_the_next_brief(tmp_path):
    llm = RecordingLLM(script())
    run_dir = tmp_path / "run"
    loop = scripted_llm_loop(run_dir, llm, trial_hours=0.01, smoke=lambda target, source, workdir: SmokeResult(True, "", 0.0))
    assert loop.run() == 0

    rows = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    first = [r for r in rows if r.get("candidate") == 1]
    assert first and all(r["hypothesis"] == HYPOTHESIS for r in first)
    second = [r for r in rows if r.get("candidate") == 2][-1]["hypothesis"]
    assert "\n" not in second and "\t" not in second and len(second) <= 200 and second.startswith("line one line two x")
    assert all(r["hypothesis"] is None for r in rows if r["kind"] == "baseline")

    # the next iteration's brief tells candidate 1's outcome with its hypothesis, the budget and the goal metric
    briefs = [json.loads(r)["messages"][0]["text"] for r in llm.requests]
    second_brief = next(b for b in briefs if b.startswith("Iteration 2."))
    told = next(line for line in second_brief.splitlines() if line.startswith("- candidate 1: keep"))
    assert told.endswith(f"| hypothesis: {HYPOTHESIS}"), second_brief
    for brief in (briefs[0], second_brief):
        assert "Goal metric: validation ndcg@10" in brief
        assert "Trial budget: 0.6 min (36 s)" in brief
    # what the meta-agent reads in its view: ledger.tsv's column and the trial's summary
    view = run_dir / "view"
    header, *lines = (view / "ledger.tsv").read_text().splitlines()
    column = header.split("\t").index("hypothesis")
    assert HYPOTHESIS in [line.split("\t")[column] for line in lines]
    summaries = [json.loads(p.read_text()) for p in view.glob("trials/*/summary.json")]
    assert HYPOTHESIS in [s.get("hypothesis") for s in summaries]
    assert "hypothesis" in (run_dir / "results.tsv").read_text().splitlines()[0].split("\t")
    # api.md is in the view, and the model could read it
    api = (view / "api.md").read_text()
    assert "env.bash(" in api and "env.bash(" in json.dumps(llm.requests[1])


def test_api_md_holds_the_real_signatures():
    api = api_doc(TARGETS["harness"])
    sig = inspect.signature(HarnessEnv.bash)  # checked independently of how api.md formats it
    params = [p for p in sig.parameters.values() if p.name != "self"]
    line = next(line for line in api.splitlines() if line.startswith("env.bash("))
    for p in params:
        text = f"{p.name}: {p.annotation}" + ("" if p.default is p.empty else f" = {p.default!r}")
        assert text in line, (text, line)
    assert line.endswith(f"-> {sig.return_annotation}")
    public = [n for n, f in vars(HarnessEnv).items() if inspect.isfunction(f) and not n.startswith("_")]
    assert public and all(f"env.{n}(" in api for n in public)
    assert "env.prompt: str" in api and "Message(role: str" in api and "HarnessStopped" in api

    recipe = api_doc(TARGETS["recipe"])
    source = TARGETS["recipe"].baseline.read_text()
    run_class = source[source.index("class Run:"):]
    methods = re.findall(r"\n    def ([a-z]\w*)\(self(?:, )?([^)]*)\) -> ([^:]+):", run_class.split("\ndef ")[0])
    assert len(methods) >= 3
    for name, args, ret in methods:
        assert f"run.{name}({args}) -> {ret}" in recipe, name
    assert "run.should_stop(step: int) -> str | None" in recipe and "train(run) -> dict" in recipe
    assert "run.pool = args.pool  # jsonl(.gz)" in recipe


def test_the_search_records_its_knobs_as_its_hypothesis(tmp_path):
    loop = loop_driver.make_loop(tmp_path / "run", 2)
    assert loop.run() == 0
    cands = [r for r in Ledger(tmp_path / "run").rows() if r["kind"] == "candidate"]
    assert cands and all(r["hypothesis"].startswith("knobs: ") for r in cands), [r["hypothesis"] for r in cands]
    assert any("=" in r["hypothesis"] for r in cands)


def test_a_finish_without_a_hypothesis_still_ends_the_iteration(tmp_path):
    from autoembed.loop.meta.base import ProposeContext
    from autoembed.loop.meta.repo import TargetRepo

    view = tmp_path / "view"
    TargetRepo.create(view / "repo", "harness.py", TARGETS["harness"].baseline.read_text(), "baseline")
    llm = RecordingLLM([{"tool_calls": [{"name": "finish", "arguments": {"description": "nothing"}}]}])
    proposal = LLMMetaAgent("scripted:meta-script", tmp_path / "meta", llm=llm).propose(
        ProposeContext(1, "", view, trial_seconds=180.0, main_metric="ndcg@10"))
    assert proposal.hypothesis == "(no hypothesis given)" and proposal.description == "nothing"
    tools = json.loads(llm.requests[0])["tools"]
    finish = next(t for t in tools if t["name"] == "finish")
    assert finish["parameters"]["required"] == ["hypothesis", "description"]
    brief = json.loads(llm.requests[0])["messages"][0]["text"]
    assert "Trial budget: 3.0 min (180 s)" in brief and "Goal metric: validation ndcg@10" in brief
