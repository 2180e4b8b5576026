"""CodexAgent: its parser on a recorded `codex exec --json` stream, its config, and the real Codex CLI
(npm @openai/codex) run inside a sandbox against the fake Responses server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from pathlib import Path

import pytest

from autoembed.agents.base import TrialContext
from autoembed.agents.cli.codex import OPENAI_BASE_URL, CodexAgent
from autoembed.llm.pricing import PRICES
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.none import NoSandbox
from autoembed.trace import Event, TraceWriter, read_trace, total_usage
from tests.fakellm import FakeLLM, Turn
from tests.gated import (LEAK_PROBE, REAL_KEYS, assert_no_real_key_inside, assert_only_the_gateway_reached_the_fake,
                         gated_sandbox)

# Recorded from codex-cli 0.169.0 (stdout and stderr merged, as CliAgent reads it) against the fake server:
# a first turn that runs two commands (the second fails), then `codex exec resume <thread id>`.
RECORDED_FIRST = """\
WARNING: proceeding, even though we could not create PATH aliases: Refusing to create helper binaries under temporary dir "/tmp" (codex_home: AbsolutePathBuf("/tmp/cx/home"))
Reading additional input from stdin...
{"type":"thread.started","thread_id":"01a20595-f73a-7ce3-9feb-0dd4b6976acd"}
{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `fake-model` not found. Defaulting to fallback metadata; this can degrade performance and cause issues."}}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"I'll create the file."}}
{"type":"item.started","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo hi > made.txt && ls'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo hi > made.txt && ls'","aggregated_output":"made.txt\\n","exit_code":0,"status":"completed"}}
{"type":"item.started","item":{"id":"item_3","type":"command_execution","command":"/bin/bash -lc false","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_3","type":"command_execution","command":"/bin/bash -lc false","aggregated_output":"","exit_code":1,"status":"failed"}}
{"type":"item.completed","item":{"id":"item_4","type":"agent_message","text":"all done 3"}}
{"type":"turn.completed","usage":{"input_tokens":127,"cached_input_tokens":5,"cache_write_input_tokens":0,"output_tokens":17,"reasoning_output_tokens":0}}
"""
RECORDED_RESUMED = """\
{"type":"thread.started","thread_id":"01a20595-f73a-7ce3-9feb-0dd4b6976acd"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'ls'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'ls'","aggregated_output":"made.txt\\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"all done 4"}}
{"type":"turn.completed","usage":{"input_tokens":227,"cached_input_tokens":5,"cache_write_input_tokens":0,"output_tokens":20,"reasoning_output_tokens":0}}
"""
THREAD = "01a20595-f73a-7ce3-9feb-0dd4b6976acd"


def parse(agent: CodexAgent, stream: str) -> list[Event]:
    return [event for line in stream.splitlines(keepends=True) for event in agent.parse_line(line)]


def test_parser_on_recorded_stream():
    agent = CodexAgent(model="gpt-5")
    first = parse(agent, RECORDED_FIRST)
    assert [e.kind for e in first] == ["system", "system", "assistant", "tool_call", "tool_result", "tool_call",
                                       "tool_result", "assistant", "usage"]
    assert agent.thread_id == THREAD
    call, result = first[3], first[4]
    assert call.tool == "shell" and call.args == {"command": "/bin/bash -lc 'echo hi > made.txt && ls'"}
    assert result.call_id == call.call_id and result.text == "made.txt\n" and result.is_error is False
    assert first[6].is_error is True and "exit code 1" in first[6].text
    assert first[7].text == "all done 3" and first[1].text.startswith("codex warning: Model metadata")
    usage = first[-1].usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (122, 5, 17)
    price_in, price_out, price_read, _ = PRICES["gpt-5"]
    assert usage.cost_usd == pytest.approx((122 * price_in + 17 * price_out + 5 * price_read) / 1e6)

    # the re-prompt resumes this thread by id; codex reports the thread's cumulative usage, so the
    # second turn's event carries only its own share; item ids restart, call ids must not collide
    argv = agent.argv(None, "keep going", first=False)
    assert argv[:3] == ["codex", "exec", "resume"] and argv[-3:] == ["--", THREAD, "keep going"]
    second = parse(agent, RECORDED_RESUMED)
    assert [e.kind for e in second] == ["system", "tool_call", "tool_result", "assistant", "usage"]
    assert second[1].call_id != call.call_id, "item_2 of the resumed process is a different call"
    u2 = second[-1].usage
    assert (u2.input_tokens, u2.cache_read_tokens, u2.output_tokens) == (100, 0, 3)
    assert total_usage(first + second).output_tokens == 20


def test_parser_item_shapes_and_junk():
    """Item types the recorded run did not produce, in the shapes of codex's exec_events.rs."""
    agent = CodexAgent()
    lines = [
        '{"type":"thread.started","thread_id":"t1"}',
        '{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Planning** the fix"}}',
        '{"type":"item.started","item":{"id":"item_1","type":"todo_list",'
        '"items":[{"text":"train","completed":false}]}}',
        '{"type":"item.completed","item":{"id":"item_1","type":"todo_list",'
        '"items":[{"text":"train","completed":true}]}}',
        '{"type":"item.completed","item":{"id":"item_2","type":"file_change","changes":'
        '[{"path":"/w/train.py","kind":"add"},{"path":"/w/a.py","kind":"update"}],"status":"completed"}}',
        '{"type":"item.started","item":{"id":"item_3","type":"mcp_tool_call","server":"docs","tool":"search",'
        '"arguments":{"q":"loss"},"status":"in_progress"}}',
        '{"type":"item.completed","item":{"id":"item_3","type":"mcp_tool_call","server":"docs","tool":"search",'
        '"arguments":{"q":"loss"},"result":null,"error":{"message":"server gone"},"status":"failed"}}',
        '{"type":"item.updated","item":{"id":"item_4","type":"command_execution","command":"sleep 9",'
        '"aggregated_output":"","exit_code":null,"status":"in_progress"}}',
        '{"type":"turn.failed","error":{"message":"stream disconnected before completion"}}',
        '{"type":"error","message":"Reconnecting... 1/5"}',
        '2026-11-22T23:26:25Z ERROR codex_core::tools::router: error=unsupported call: shell',
        "Reading additional input from stdin...", "", "[1, 2]", '{"type":"item.completed","item":"oops"}',
        '{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":0,"output_tokens":2}}',
    ]
    events = [e for line in lines for e in agent.parse_line(line)]
    kinds = [e.kind for e in events]
    assert kinds == ["system", "assistant", "assistant", "tool_call", "tool_result", "tool_call", "tool_result",
                     "error", "error", "error", "error", "usage"]
    assert events[1].text.startswith("(reasoning)") and "[x] train" in events[2].text
    assert events[3].tool == "apply_patch" and events[4].text == "add /w/train.py\nupdate /w/a.py"
    assert events[5].tool == "mcp:docs/search" and events[5].args == {"q": "loss"}
    assert events[6].is_error and events[6].text == "server gone"
    assert "unsupported call" in events[9].text and "oops" in events[10].text
    assert events[-1].usage.cost_usd is None, "no model given: cost unknown, not zero"


def test_config_points_codex_at_the_endpoint_without_the_key(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    box = NoSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + 60))
    ctx = _ctx(tmp_path, box, env={"CODEX_API_KEY": "sk-only-codex", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/"})
    agent = CodexAgent(model="openai:gpt-5")
    env = agent.write_config(ctx, agent.config_dir(ctx))
    config = tomllib.loads((workdir / ".agent" / "codex" / "config.toml").read_text())
    assert env == {"CODEX_HOME": str(workdir / ".agent" / "codex"), "OPENAI_API_KEY": "sk-only-codex"}
    assert config["model"] == "gpt-5" and config["model_provider"] == "autoembed"
    provider = config["model_providers"]["autoembed"]
    assert provider == {"name": "autoembed", "base_url": "http://127.0.0.1:9/v1", "env_key": "OPENAI_API_KEY",
                        "wire_api": "responses"}
    assert "sk-only-codex" not in (workdir / ".agent" / "codex" / "config.toml").read_text()
    assert agent.argv(ctx, "-go", first=True)[-2:] == ["--", "-go"]
    assert agent.argv(ctx, "more", first=False)[-3:] == ["--last", "--", "more"], "no thread id seen yet"

    no_key = _ctx(tmp_path, box, env={})
    assert agent.endpoint(no_key) == OPENAI_BASE_URL
    outcome = CodexAgent().run(no_key)
    assert outcome.exit_reason == "crashed" and "OPENAI_API_KEY" in outcome.detail


# -- the real CLI ----------------------------------------------------------------------------------
def _ctx(tmp_path: Path, box, env: dict, prompt: str = "hi", deadline_s: float = 60) -> TrialContext:
    run_dir = tmp_path / "run"
    return TrialContext(workdir=box.config.workdir, sandbox=box, deadline=time.time() + deadline_s, prompt=prompt,
                        model=None, trace=TraceWriter(run_dir / "trace.jsonl", source="codex"),
                        raw_log=run_dir / "agent.log", run_dir=run_dir, env=env, progress=lambda msg: None,
                        reprompt_margin_s=0)


def _shell_call(body: dict, script: str) -> tuple[str, dict]:
    """Whichever shell tool this codex version offers."""
    tools = {tool.get("name") for tool in body.get("tools", [])}
    if "exec_command" in tools:
        return "exec_command", {"cmd": script}
    if "shell_command" in tools:
        return "shell_command", {"command": script}
    if "shell" in tools:
        return "shell", {"command": ["bash", "-lc", script]}
    raise AssertionError(f"codex offered no shell tool: {sorted(tools)}")


@pytest.mark.cli
@pytest.mark.skipif(shutil.which("codex") is None, reason="codex CLI not installed: npm install -g @openai/codex")
@pytest.mark.parametrize("kind", ["bwrap", "docker"])
def test_real_codex_runs_a_command_in_the_sandbox(tmp_path, kind):
    script_cmd = f"echo made-by-codex > codex_made.txt && env > env_seen.txt; {LEAK_PROBE}; pwd"

    def script(body: dict) -> Turn:
        answered = any(item.get("type") == "function_call_output" for item in body.get("input", []))
        if answered:
            return Turn(text="Created codex_made.txt.", input_tokens=50, output_tokens=6, cache_read_tokens=40)
        return Turn(text="Creating the file.", tool_calls=[_shell_call(body, script_cmd)], input_tokens=30,
                    output_tokens=9)

    workdir = tmp_path / "workdir"
    workdir.mkdir()
    agent = CodexAgent(model="gpt-5")
    agent.max_turns = 2  # the first prompt and one re-prompt that must resume the same thread
    with FakeLLM(script) as fake:
        with gated_sandbox(kind, workdir, fake, readonly_extra=agent.readonly_mounts(),
                           providers=agent.gateway_providers) as (box, gateway, env):
            ctx = _ctx(tmp_path, box, env=env, prompt="Create codex_made.txt in the working directory.",
                       deadline_s=240)
            outcome = agent.run(ctx)
        requests = [r for r in fake.requests if r["path"].endswith("/responses")]
        assert_only_the_gateway_reached_the_fake(fake, gateway)
    secret = gateway.token
    print(f"codex ran in the {box.kind!r} sandbox; {agent.versions()}")
    log = ctx.raw_log.read_text(errors="replace")
    assert outcome.exit_reason == "finished" and outcome.turns == 2, f"{outcome}\n{log[-3000:]}"
    assert (workdir / "codex_made.txt").read_text() == "made-by-codex\n"

    events = read_trace(ctx.trace.path)
    calls = [e for e in events if e.kind == "tool_call"]
    results = [e for e in events if e.kind == "tool_result"]
    assert len(calls) == 1 and calls[0].tool == "shell" and "codex_made.txt" in calls[0].args["command"]
    assert len(results) == 1 and results[0].call_id == calls[0].call_id and not results[0].is_error
    assert results[0].text.strip().endswith(str(Path(box.workdir_inside)))  # pwd ran in the workdir
    assert [e.text for e in events if e.kind == "user"][1].startswith("You have about")
    assert [e.text for e in events if e.kind == "assistant"][-1] == "Created codex_made.txt."
    usage = total_usage(events)
    # turn 1: 30 (tool call) + 50+40 cached (answer); turn 2 (resumed): 50+40 cached, counted once each
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (130, 80, 21)
    assert usage.cost_usd is not None and usage.cost_usd > 0

    # the re-prompt continued the thread: its request replays the first turn's history
    assert len(requests) == 3
    replay = json.dumps(requests[2]["body"]["input"])
    assert "Create codex_made.txt" in replay and "function_call_output" in replay and "You have about" in replay
    # config.toml took effect: no hosted web search tool (local servers reject it), no analytics
    assert all(tool.get("type") != "web_search" for tool in requests[0]["body"]["tools"])
    turn_meta = json.loads(requests[0]["body"].get("client_metadata", {}).get("x-codex-turn-metadata", "{}"))
    assert turn_meta.get("analytics_enabled", False) is False
    # the gateway swapped the token for the host's key; the token never reached a file or the agent's commands
    assert {r["headers"].get("authorization") or r["headers"].get("Authorization") for r in requests} == {
        f"Bearer {REAL_KEYS['openai']}"}
    assert_no_real_key_inside(workdir, gateway.token)
    assert secret not in (workdir / "env_seen.txt").read_text()
    assert secret not in (workdir / ".agent" / "codex" / "config.toml").read_text()
