"""What the real CLIs sent and got through the gateway (tests/wire_shapes/*.jsonl, recorded by
tests/wire_shapes/record.py from claude-code 2.1.197, codex-cli 0.171.0 and gemini-cli 0.61.0) read by wire.py into
trajectories: every model call a step, every tool call and result present, linked by ids unique in the trajectory,
and each trajectory valid under the `atif` package's ATIF models."""

from __future__ import annotations

import json
from pathlib import Path

import atif
import pytest

from autoembed.gateway.wire import WIRES
from autoembed.trace import Event
from autoembed.trial import trajectory

SHAPES = Path(__file__).parent / "wire_shapes"
AGENT = {"name": "some-cli", "version": "1.2.3"}


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (SHAPES / f"{name}.jsonl").read_text().splitlines()]


def build(calls: list[dict], events: list[Event] | None = None) -> dict:
    built = trajectory.build(session_id="s", agent=dict(AGENT), prompt="Make one.txt, then show it.", started=1.0,
                             calls=calls, events=events or [])
    atif.Trajectory.model_validate(json.loads(json.dumps(built, default=str)))  # what write() puts on disk
    return built


def tool_calls(built: dict) -> list[dict]:
    return [c for s in built["steps"] for c in s.get("tool_calls") or []]


def results(built: dict) -> dict[str, str]:
    return {r["source_call_id"]: r["content"] for s in built["steps"]
            for r in (s.get("observation") or {}).get("results", [])}


def check_linked(built: dict, calls: list[dict]) -> None:
    answered = [c for c in calls if c.get("response") and (c.get("status") or 0) < 400]
    agent_steps = [s for s in built["steps"] if s["source"] == "agent"]
    assert len(agent_steps) == len(answered) == built["final_metrics"]["extra"]["model_calls"]
    made = sum(len(WIRES[c["provider"]].reply(c["response"]).tool_calls) for c in answered)
    ids = [c["tool_call_id"] for c in tool_calls(built)]
    assert len(ids) == made and len(set(ids)) == len(ids) and all(ids), ids
    sent_back = {cid for c in calls if c.get("request") for cid, _ in WIRES[c["provider"]].tool_results(c["request"])}
    assert set(results(built)) == set(ids)  # each result linked to its own call, every call answered
    assert len(sent_back) == len(ids)


@pytest.mark.parametrize("name, tool, extra_names", [
    ("claude", "Bash", {"Read", "Write"}),
    ("codex", "exec_command", {"write_stdin"}),
    ("codex-custom", "exec", {"wait"}),
    ("gemini", "run_shell_command", {"update_topic"}),
])
def test_recorded_cli_calls_become_linked_tool_calls_and_results(name, tool, extra_names):
    calls = load(name)
    built = build(calls)
    check_linked(built, calls)
    made = tool_calls(built)
    assert [c["function_name"] for c in made] == [tool, tool]
    args = json.dumps([c["arguments"] for c in made])
    assert "echo one > one.txt" in args and "cat one.txt" in args
    second = results(built)[made[1]["tool_call_id"]]
    assert "one" in second
    assert {tool} | extra_names <= set(built["agent"]["extra"]["tools_offered"])
    assert built["agent"]["name"] == "some-cli" and built["schema_version"] == trajectory.SCHEMA_VERSION


def test_codex_default_model_custom_tools_are_read():
    """Codex's default model: tools declared in an `additional_tools` input item, called as custom_tool_call,
    answered as custom_tool_call_output (whose output is a list of input_text parts)."""
    calls = load("codex-custom")
    assert calls[0]["request"]["input"][0]["type"] == "additional_tools" and not calls[0]["request"].get("tools")
    made = tool_calls(build(calls))
    assert made[0]["arguments"]["input"].startswith("const out = await tools.exec_command(")
    outputs = WIRES["openai"].tool_results(calls[2]["request"])
    assert [cid for cid, _ in outputs] == [c["tool_call_id"] for c in made] and "exit_code" in outputs[1][1]


def test_gemini_calls_take_the_ids_the_cli_gave_them():
    calls = load("gemini")
    replies = [WIRES["gemini"].reply(c["response"]) for c in calls if c["path"].endswith(":streamGenerateContent")]
    assert all(not c["tool_call_id"] for r in replies for c in r.tool_calls)  # the upstream sent none
    made = tool_calls(build(calls))
    cli_ids = [cid for c in calls for cid, _ in WIRES["gemini"].call_ids_in(c["request"] or {})]
    assert [c["tool_call_id"] for c in made] == list(dict.fromkeys(cli_ids))
    assert all(i.startswith("run_shell_command_") for i in cli_ids)


def test_ids_stay_unique_without_any_id_and_across_repeated_ids():
    """Gemini's replies with no later request to name them, and a server that numbers every reply's calls from 0."""
    gemini = [c for c in load("gemini") if c["path"].endswith(":streamGenerateContent")]
    for call in gemini:
        call["request"] = {}
    built = build(gemini)
    assert [c["tool_call_id"] for c in tool_calls(built)] == ["run_shell_command", "run_shell_command#2"]

    def reply(n):
        return {"choices": [{"message": {"content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "bash", "arguments": json.dumps({"n": n})}}]}}]}

    def history(upto):
        messages = [{"role": "user", "content": "go"}]
        for n in range(upto):
            messages += [{"role": "assistant", "tool_calls": [{"id": "call_0"}]},
                         {"role": "tool", "tool_call_id": "call_0", "content": f"out {n}"}]
        return {"messages": messages}

    calls = [{"ts": float(n), "provider": "openai", "status": 200, "model": "m", "usage": {}, "request": history(n),
              "response": reply(n)} for n in range(3)]
    built = build(calls, [Event("tool_result", call_id="call_0", text="out 2")])
    assert [c["tool_call_id"] for c in tool_calls(built)] == ["call_0", "call_0#2", "call_0#3"]
    assert results(built) == {"call_0": "out 0", "call_0#2": "out 1", "call_0#3": "out 2"}


def test_unpriced_calls_are_null_not_zero():
    calls = load("claude")
    for call in calls:
        call["usage"] = {**call["usage"], "cost_usd": None}
    built = build(calls)
    assert built["final_metrics"]["total_cost_usd"] is None
    assert all(s["metrics"]["cost_usd"] is None for s in built["steps"] if s["source"] == "agent")
