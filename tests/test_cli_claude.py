"""ClaudeCodeAgent: its stream-json parser on a recorded stream, its command line, and the real
Claude Code CLI run by the agent inside a sandbox against the fake Anthropic server on 127.0.0.1.

The CLI comes from npm (`npm install -g @anthropic-ai/claude-code`); without it the CLI tests skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from autoembed.agents.base import TrialContext
from autoembed.agents.cli.claude import ClaudeCodeAgent
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.none import NoSandbox
from autoembed.trace import TraceWriter, read_trace
from tests.fakellm import Fault, FakeLLM, Turn
from tests.gated import LEAK_PROBE, assert_no_real_key_inside, assert_only_the_gateway_reached_the_fake, gated_sandbox

# Recorded from claude-code 2.1.197 (`--print --verbose --output-format stream-json`) against the fake
# server: a text + Bash call, a Read of a missing file (an error result), a final text, the result.
RECORDED_STREAM = r'''
{"type":"system","subtype":"init","cwd":"/tmp/recyfv2mtvw","session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","tools":["Task","Bash","CronCreate","CronDelete","CronList","Edit","EnterWorktree","ExitWorktree","NotebookEdit","Read","ReportFindings","ScheduleWakeup","SendMessage","Skill","TaskCreate","TaskGet","TaskList","TaskOutput","TaskStop","TaskUpdate","WebFetch","WebSearch","Workflow","Write"],"mcp_servers":[],"model":"claude-sonnet-4-6","permissionMode":"bypassPermissions","slash_commands":["deep-research","update-config","verify","debug","code-review","simplify","batch","fewer-permission-prompts","loop","claude-api","run","run-skill-generator","clear","compact","config","context","heapdump","init","reload-skills","review","security-review","usage","insights","goal","team-onboarding"],"apiKeySource":"ANTHROPIC_API_KEY","claude_code_version":"2.1.197","output_style":"default","agents":["claude","Explore","general-purpose","Plan","statusline-setup"],"skills":["deep-research","update-config","verify","debug","code-review","simplify","batch","fewer-permission-prompts","loop","claude-api","run","run-skill-generator"],"plugins":[],"analytics_disabled":true,"product_feedback_disabled":true,"uuid":"f387ee88-8d7a-49e6-ad33-7f6954df1e79","memory_paths":{"auto":"/tmp/recyfv2mtvw/.agent/claude/projects/-tmp-recyfv2mtvw/memory/"},"fast_mode_state":"off"}
{"type":"assistant","message":{"id":"msg_f31f362f34514dfe99059b15","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[{"type":"text","text":"I will write the proof."}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":1,"cache_creation_input_tokens":27408,"cache_read_input_tokens":0},"context_management":null},"parent_tool_use_id":null,"session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","uuid":"1f965e4f-c0a5-4798-9115-cf198fc5dfc8"}
{"type":"assistant","message":{"id":"msg_f31f362f34514dfe99059b15","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[{"type":"tool_use","id":"toolu_6c45f14917c54ef783c3e9a4","name":"Bash","input":{"command":"echo hi > proof.txt && cat proof.txt","description":"write proof"}}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":1,"cache_creation_input_tokens":27408,"cache_read_input_tokens":0},"context_management":null},"parent_tool_use_id":null,"session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","uuid":"fc58ee2b-c8d7-4cdc-927e-ee793a753d93"}
{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_6c45f14917c54ef783c3e9a4","type":"tool_result","content":"hi","is_error":false}]},"parent_tool_use_id":null,"session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","uuid":"afbc3665-3b9f-4e2e-8a76-94ba6c465217","timestamp":"2026-11-22T23:29:51.506Z","tool_use_result":{"stdout":"hi","stderr":"","interrupted":false,"isImage":false,"noOutputExpected":false}}
{"type":"assistant","message":{"id":"msg_c397ec4affc5478eabcf6368","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[{"type":"tool_use","id":"toolu_1cb2ebfcb4cb4eaeaf6962f8","name":"Read","input":{"file_path":"/nonexistent/x.txt"}}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":27408},"context_management":null},"parent_tool_use_id":null,"session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","uuid":"45efeffa-94fc-417c-810c-ff9e0638bf64"}
{"type":"user","message":{"role":"user","content":[{"type":"tool_result","content":"File does not exist. Note: your current working directory is /tmp/recyfv2mtvw.","is_error":true,"tool_use_id":"toolu_1cb2ebfcb4cb4eaeaf6962f8"}]},"parent_tool_use_id":null,"session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","uuid":"8e2ca053-ea79-4104-b7b6-4185be03654c","timestamp":"2026-11-22T23:29:51.579Z","tool_use_result":"Error: File does not exist. Note: your current working directory is /tmp/recyfv2mtvw."}
{"type":"assistant","message":{"id":"msg_5ad8f0907ac349d0ba5cdcc5","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[{"type":"text","text":"Done: proof.txt written."}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":40,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":27408},"context_management":null},"parent_tool_use_id":null,"session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","uuid":"43851142-07b6-4918-ae62-25fc89ebe94f"}
{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"duration_ms":815,"duration_api_ms":254,"ttft_ms":537,"ttft_stream_ms":536,"time_to_request_ms":449,"num_turns":3,"result":"Done: proof.txt written.","stop_reason":"end_turn","session_id":"b7e0d5e1-5403-48a9-9e91-b644335b9f10","total_cost_usd":0.1198008,"usage":{"input_tokens":62,"cache_creation_input_tokens":27408,"cache_read_input_tokens":54816,"output_tokens":26,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{"claude-sonnet-4-6":{"inputTokens":62,"outputTokens":26,"cacheReadInputTokens":54816,"cacheCreationInputTokens":27408,"webSearchRequests":0,"costUSD":0.1198008,"contextWindow":200000,"maxOutputTokens":32000}},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"7ba8c1ba-69a1-4799-9985-216b9de89039"}
not json: a stray line the CLI might print
[1, 2]
'''
SESSION = "b7e0d5e1-5403-48a9-9e91-b644335b9f10"
BASH_ID = "toolu_6c45f14917c54ef783c3e9a4"
READ_ID = "toolu_1cb2ebfcb4cb4eaeaf6962f8"


def parse_all(agent: ClaudeCodeAgent, stream: str):
    return [event for line in stream.splitlines() for event in agent.parse_line(line)]


def test_parser_on_recorded_stream():
    agent = ClaudeCodeAgent()
    events = parse_all(agent, RECORDED_STREAM)
    assert [e.kind for e in events] == ["system", "assistant", "tool_call", "tool_result", "tool_call", "tool_result",
                                        "assistant", "usage"]
    system, text, bash, bash_out, read, read_out, final, usage = events
    assert SESSION in system.text and "2.1.197" in system.text and agent.session_id == SESSION
    assert text.text == "I will write the proof." and final.text == "Done: proof.txt written."
    assert (bash.tool, bash.call_id) == ("Bash", BASH_ID)
    assert bash.args == {"command": "echo hi > proof.txt && cat proof.txt", "description": "write proof"}
    assert (bash_out.tool, bash_out.call_id, bash_out.text, bash_out.is_error) == ("Bash", BASH_ID, "hi", False)
    assert (read.tool, read.call_id, read.args) == ("Read", READ_ID, {"file_path": "/nonexistent/x.txt"})
    assert read_out.tool == "Read" and read_out.is_error is True and "File does not exist" in read_out.text
    # the result line's totals, not the per-message partial usage (which would double count)
    result = json.loads(RECORDED_STREAM.strip().splitlines()[7])
    u = usage.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (
        result["usage"]["input_tokens"], result["usage"]["output_tokens"],
        result["usage"]["cache_read_input_tokens"], result["usage"]["cache_creation_input_tokens"])
    assert u.cost_usd == result["total_cost_usd"] == 0.1198008
    assert all(e.source == "claude" for e in events)
    # every event survives the trace.jsonl round trip
    for event in events:
        assert type(event).from_json(event.to_json()) == event


def test_parser_reports_failed_results_and_prices_without_a_cli_cost():
    agent = ClaudeCodeAgent()
    agent.parse_line(json.dumps({"type": "system", "subtype": "init", "session_id": "s1", "model": "claude-sonnet-4-6"}))
    events = agent.parse_line(json.dumps({
        "type": "result", "subtype": "error_max_turns", "is_error": True, "num_turns": 9,
        "usage": {"input_tokens": 1000, "output_tokens": 100, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0}}))
    assert [e.kind for e in events] == ["usage", "error"] and "error_max_turns" in events[1].text
    assert events[0].usage.cost_usd == pytest.approx((1000 * 3 + 100 * 15) / 1e6)  # sonnet-4 table price
    assert agent.parse_line("") == [] and agent.parse_line('{"type": "assistant", "message": 5}')[0].kind == "error"


def test_command_line_first_turn_and_resume(tmp_path):
    agent = ClaudeCodeAgent(model="anthropic:claude-sonnet-4-6")
    ctx = make_ctx(tmp_path, NoSandbox(SandboxConfig(tmp_path / "w", time.time() + 60)), env={})
    first = agent.argv(ctx, "-starts with a dash", first=True)
    assert Path(first[0]).name.startswith("claude")  # the real path when installed, so a sandbox can bind it
    assert first[1:6] == ["--print", "--verbose", "--output-format", "stream-json",
                          "--dangerously-skip-permissions"]
    assert first[first.index("--model") + 1] == "claude-sonnet-4-6"
    assert first[-2:] == ["--", "-starts with a dash"] and "--resume" not in first and "--bare" not in first
    assert "--continue" in agent.argv(ctx, "more", first=False)  # no session seen yet
    agent.parse_line(json.dumps({"type": "system", "subtype": "init", "session_id": SESSION}))
    again = agent.argv(ctx, "more", first=False)
    assert again[again.index("--resume") + 1] == SESSION and again[-2:] == ["--", "more"]


def test_missing_credentials_fail_clearly_without_launching(tmp_path):
    ctx = make_ctx(tmp_path, NoSandbox(SandboxConfig(tmp_path / "w", time.time() + 60)), env={})
    outcome = ClaudeCodeAgent().run(ctx)
    assert outcome.exit_reason == "crashed"
    assert "ANTHROPIC_API_KEY" in outcome.detail and "CLAUDE_CODE_OAUTH_TOKEN" in outcome.detail
    assert not ctx.raw_log.exists() or ctx.raw_log.read_bytes() == b""


def test_config_env_isolates_the_cli(tmp_path):
    agent = ClaudeCodeAgent()
    ctx = make_ctx(tmp_path, NoSandbox(SandboxConfig(tmp_path / "w", time.time() + 60)), env={})
    env = agent.write_config(ctx, agent.config_dir(ctx))
    assert env["IS_SANDBOX"] == "1"  # as root, Claude Code refuses --dangerously-skip-permissions otherwise
    assert env["CLAUDE_CONFIG_DIR"] == str(ctx.workdir / ".agent" / "claude")
    assert Path(env["CLAUDE_CODE_TMPDIR"]).is_dir() and env["CLAUDE_CODE_TMPDIR"].startswith(str(ctx.workdir))
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and env["DISABLE_TELEMETRY"] == "1"
    assert not any(k in env for k in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"))  # those come from ctx.env only


# -- the real CLI ---------------------------------------------------------------------------------

needs_claude = pytest.mark.skipif(shutil.which("claude") is None,
                                  reason="Claude Code CLI not installed: npm install -g @anthropic-ai/claude-code")
PROMPT = "Create proof.txt containing hi."
REPROMPT_MARK = "minutes left"
FIRST_COMMAND = f"echo hi > proof.txt; {LEAK_PROBE}"


def make_ctx(tmp_path: Path, box, env: dict[str, str]) -> TrialContext:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    box.config.workdir.mkdir(parents=True, exist_ok=True)
    return TrialContext(workdir=box.config.workdir, sandbox=box, deadline=box.config.deadline, prompt=PROMPT,
                        model=None, trace=TraceWriter(run_dir / "trace.jsonl", source="claude"),
                        raw_log=run_dir / "agent.log", run_dir=run_dir, env=env, progress=lambda msg: None,
                        reprompt_margin_s=0.0)




def _texts(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def scripted_model(body: dict) -> Turn:
    """Answers the agent loop by what its last message holds; side calls (no tools) get a plain text."""
    if not body.get("tools"):
        return Turn(text="ok")
    last = body["messages"][-1]
    if isinstance(last["content"], list) and any(b.get("type") == "tool_result" for b in last["content"]):
        return Turn(text="proof.txt is written.")
    if REPROMPT_MARK in _texts(last):
        return Turn(tool_calls=[("Bash", {"command": "echo again >> proof.txt", "description": "append"})])
    return Turn(tool_calls=[("Bash", {"command": FIRST_COMMAND, "description": "write the proof"})])


@needs_claude
@pytest.mark.cli
@pytest.mark.parametrize("sandbox_kind", ["bwrap", "docker", "none"])
def test_real_cli_runs_a_command_in_the_sandbox_and_resumes(tmp_path, sandbox_kind):
    """Through the trial's gateway (the fake behind it), in a sandbox without network."""
    agent = ClaudeCodeAgent()
    agent.max_turns = 2  # the first prompt and one re-prompt, which must resume the same session
    with FakeLLM(scripted_model) as fake:
        with gated_sandbox(sandbox_kind, tmp_path / "workdir", fake, seconds=180,
                           readonly_extra=agent.readonly_mounts(),
                           providers=agent.gateway_providers) as (box, gateway, env):
            ctx = make_ctx(tmp_path, box, env=env)
            outcome = agent.run(ctx)
        requests = [r for r in fake.requests if r["body"].get("tools")]
        assert_only_the_gateway_reached_the_fake(fake, gateway)
        assert all(r["path"].startswith("/v1/messages") for r in fake.requests), [r["path"] for r in fake.requests]

    raw = ctx.raw_log.read_text()
    assert outcome.exit_reason == "finished", (outcome, raw[-3000:])
    assert outcome.turns == 2
    assert (ctx.workdir / "proof.txt").read_text() == "hi\nagain\n", raw[-3000:]

    events = read_trace(ctx.run_dir / "trace.jsonl")
    calls = [e for e in events if e.kind == "tool_call"]
    results = {e.call_id: e for e in events if e.kind == "tool_result"}
    assert [c.args["command"] for c in calls] == [FIRST_COMMAND, "echo again >> proof.txt"]
    for call in calls:
        assert call.tool == "Bash" and results[call.call_id].tool == "Bash"
        assert results[call.call_id].is_error is False
    assert [e.text for e in events if e.kind == "user"][0] == PROMPT
    usages = [e for e in events if e.kind == "usage"]
    assert len(usages) == 2 and all(u.usage.input_tokens > 0 and u.usage.cost_usd > 0 for u in usages)
    assert sum(1 for e in events if e.kind == "system" and "session" in (e.text or "")) == 2

    # the re-prompt resumed the session: its first request carries the first turn's conversation
    reprompt_call = next(r["body"] for r in requests if REPROMPT_MARK in _texts(r["body"]["messages"][-1]))
    assert PROMPT in _texts(reprompt_call["messages"][0])
    assert any(b.get("type") == "tool_use" for m in reprompt_call["messages"] if isinstance(m["content"], list)
               for b in m["content"])
    if sandbox_kind != "none":  # the host's key is nowhere inside; the token is (positive control)
        assert_no_real_key_inside(ctx.workdir, gateway.token)
    # the gateway counted every call the CLI made, with the tokens the fake reported
    summary = gateway.summary()
    assert summary["calls"] == len(fake.requests) and summary["usage"]["output_tokens"] == 7 * len(fake.requests)
    assert list((ctx.workdir / ".agent" / "claude" / "projects").rglob("*.jsonl")), "session not kept in CLAUDE_CONFIG_DIR"


@needs_claude
@pytest.mark.cli
def test_as_root_without_is_sandbox_the_cli_refuses(tmp_path):
    """The trap IS_SANDBOX=1 avoids, checked against the installed CLI so a change in it shows up here."""
    import os

    if os.geteuid() != 0:
        pytest.skip("only root triggers the refusal")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CLAUDE_CONFIG_DIR": str(tmp_path / "cfg"),
           "ANTHROPIC_API_KEY": "sk-ant-fake", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    proc = subprocess.run(["claude", "--print", "--dangerously-skip-permissions", "--", "hi"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert "dangerously-skip-permissions" in proc.stdout + proc.stderr and "root" in proc.stdout + proc.stderr


@needs_claude
@pytest.mark.cli
def test_real_cli_is_stopped_at_the_deadline(tmp_path):
    """The model endpoint hangs: the agent must still come back at the deadline, with the CLI killed."""
    agent = ClaudeCodeAgent()
    with FakeLLM(scripted_model, faults=[Fault("hang", seconds=30.0)] * 3) as fake:
        with gated_sandbox("none", tmp_path / "workdir", fake, seconds=6,
                           readonly_extra=agent.readonly_mounts(),
                           providers=agent.gateway_providers) as (box, gateway, env):
            ctx = make_ctx(tmp_path, box, env=env)
            start = time.monotonic()
            outcome = agent.run(ctx)
            elapsed = time.monotonic() - start
        assert fake.fault_log and fake.fault_log[0] == "hang"  # the CLI did reach the hanging endpoint
    assert outcome.exit_reason == "deadline" and elapsed < 15, (outcome, elapsed)
    assert not any(e.kind == "usage" for e in read_trace(ctx.run_dir / "trace.jsonl"))
