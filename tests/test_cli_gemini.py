"""GeminiAgent: its stream parser on recorded Gemini CLI output, and the real CLI (npm @google/gemini-cli)
run inside a sandbox against the fake Gemini server, scripted to make it run a shell command."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from autoembed.agents.base import TrialContext
from autoembed.agents.cli.gemini import GeminiAgent
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.none import NoSandbox
from autoembed.trace import TraceWriter, read_trace
from tests.fakellm.server import FakeLLM, Turn
from tests.gated import (LEAK_PROBE, REAL_KEYS, assert_no_real_key_inside, assert_only_the_gateway_reached_the_fake,
                         gated_sandbox)

# Recorded from gemini-cli 0.61.0 (stdout and stderr together, as the agent reads them) against the
# fake server: a text delta, two parallel tool calls (one fails), a final answer, the result stats.
RECORDED = r"""Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
YOLO mode is enabled. All tool calls will be automatically approved.
Ripgrep is not available. Falling back to GrepTool.
{"type":"init","timestamp":"2026-11-22T23:31:01.285Z","session_id":"de4dd40e-398b-4fa1-9f99-3e2289db09cf","model":"gemini-2.5-pro"}
{"type":"message","timestamp":"2026-11-22T23:31:01.286Z","role":"user","content":"What is the answer?"}
{"type":"message","timestamp":"2026-11-22T23:31:01.321Z","role":"assistant","content":"I will check the folder","delta":true}
{"type":"tool_use","timestamp":"2026-11-22T23:31:01.452Z","tool_name":"run_shell_command","tool_id":"run_shell_command__run_shell_command_1795390261327_0","parameters":{"command":"echo 42 > answer.txt && cat answer.txt"}}
{"type":"tool_use","timestamp":"2026-11-22T23:31:01.466Z","tool_name":"read_file","tool_id":"read_file__read_file_1795390261462_1","parameters":{"file_path":"missing.txt"}}
{"type":"tool_result","timestamp":"2026-11-22T23:31:01.792Z","tool_id":"run_shell_command__run_shell_command_1795390261327_0","status":"success","output":"42"}
{"type":"tool_result","timestamp":"2026-11-22T23:31:01.792Z","tool_id":"read_file__read_file_1795390261462_1","status":"error","output":"File not found.","error":{"type":"file_not_found","message":"File not found: /tmp/gexp/wd2/missing.txt"}}
Error executing tool read_file: File not found.
{"type":"message","timestamp":"2026-11-22T23:31:01.812Z","role":"assistant","content":"The answer is 42 and missing.txt does not exist.","delta":true}
{"type":"result","timestamp":"2026-11-22T23:31:01.816Z","status":"success","stats":{"total_tokens":415,"input_tokens":370,"output_tokens":45,"cached":50,"input":320,"duration_ms":531,"tool_calls":2,"models":{"gemini-2.5-pro":{"total_tokens":415,"input_tokens":370,"output_tokens":45,"cached":50,"input":320}}}}
"""

# The same CLI when the API answers 400 (stack trace lines cut).
RECORDED_API_ERROR = r"""{"type":"init","timestamp":"2026-11-22T23:31:11.419Z","session_id":"c6905dda-7ed4-4912-bf90-0c7294908894","model":"gemini-2.5-pro"}
{"type":"message","timestamp":"2026-11-22T23:31:11.421Z","role":"user","content":"What is the answer?"}
Error when talking to Gemini API Full report available at: /tmp/gemini-client-error-Turn.run-sendMessageStream-2026-11-22T23-31-11-478Z.json _ApiError: {"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT"}}
  status: 400
}
{"type":"result","timestamp":"2026-11-22T23:31:11.597Z","status":"error","error":{"type":"unknown","message":"[API Error: {\"error\":{\"code\":400,\"message\":\"Request contains an invalid argument.\",\"status\":\"INVALID_ARGUMENT\"}}]"},"stats":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0,"duration_ms":0,"tool_calls":0,"models":{"gemini-2.5-pro":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0}}}}
"""


def parse_all(agent: GeminiAgent, raw: str):
    events = [e for line in raw.splitlines(keepends=True) for e in agent.parse_line(line)]
    return events + agent.flush()


def test_parser_on_recorded_stream():
    agent = GeminiAgent()
    events = parse_all(agent, RECORDED)
    assert [e.kind for e in events] == ["system", "assistant", "tool_call", "tool_call", "tool_result", "tool_result",
                                        "assistant", "usage"]
    assert agent.session_id == "de4dd40e-398b-4fa1-9f99-3e2289db09cf"
    assert events[1].text == "I will check the folder"
    shell, read = events[2], events[3]
    assert (shell.tool, shell.args) == ("run_shell_command", {"command": "echo 42 > answer.txt && cat answer.txt"})
    assert (read.tool, read.args) == ("read_file", {"file_path": "missing.txt"})
    ok, failed = events[4], events[5]
    assert (ok.call_id, ok.tool, ok.text, ok.is_error) == (shell.call_id, "run_shell_command", "42", False)
    assert (failed.call_id, failed.tool, failed.is_error) == (read.call_id, "read_file", True)
    assert "File not found: /tmp/gexp/wd2/missing.txt" in failed.text
    assert events[6].text == "The answer is 42 and missing.txt does not exist."
    usage = events[7].usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (320, 45, 50)
    # gemini-2.5-pro as genai-prices lists it: $1.25 / M uncached input, $10 / M output, $0.125 / M cached input
    assert usage.cost_usd == pytest.approx((320 * 1.25 + 45 * 10 + 50 * 0.125) / 1e6)
    assert shell.ts.startswith("2026-11-22T23:31:01.452") and all(e.source == "gemini" for e in events)
    for event in events:  # every event survives the trace.jsonl round trip
        assert type(event).from_json(event.to_json()) == event


def test_parser_on_recorded_api_error():
    events = parse_all(GeminiAgent(), RECORDED_API_ERROR)
    assert [e.kind for e in events] == ["system", "error", "usage"]
    assert "INVALID_ARGUMENT" in events[1].text
    assert events[2].usage.input_tokens == 0 and events[2].usage.cost_usd == 0.0


def test_parser_joins_deltas_and_survives_junk():
    agent = GeminiAgent()
    lines = ['{"type":"message","role":"assistant","content":"Hel","delta":true}',
             '{"type":"message","role":"assistant","content":"lo.","delta":true}',
             '{not json', '[1, 2]', '{"type": 3}', '{"type":"tool_use","tool_name":"x","parameters":"not a dict"}',
             '{"type":"tool_result","tool_id":"unknown","status":"success"}',
             '{"type":"message","role":"assistant","content":"Oops.","delta":true}',
             '{"type":"tool_result","tool_id":"t1","status":"error","error":"not a dict"}',
             '{"type":"result","status":"success","stats":{"models":{"some-local-model":{"input_tokens":5}}}}']
    events = [e for line in lines for e in agent.parse_line(line)]
    assert [e.kind for e in events] == ["assistant", "tool_call", "tool_result", "assistant", "system", "usage"]
    assert events[0].text == "Hello."
    assert events[1].args == {}
    assert events[2].tool is None and events[2].text == "(success, no text output)"
    assert events[3].text == "Oops." and "unparsed gemini event" in events[4].text  # kept, not dropped
    assert events[5].usage.input_tokens == 5 and events[5].usage.cost_usd is None  # unknown price is not free


def make_context(tmp_path: Path, sandbox, fake_url: str | None = None, model: str | None = None,
                 env: dict | None = None) -> TrialContext:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    if env is None:
        env = {"GEMINI_API_KEY": "test-key"}
        if fake_url:
            env["GOOGLE_GEMINI_BASE_URL"] = fake_url
    return TrialContext(workdir=sandbox.config.workdir, sandbox=sandbox, deadline=sandbox.config.deadline,
                        prompt=PROMPT, model=model,
                        trace=TraceWriter(run_dir / "trace.jsonl", source="gemini"), raw_log=run_dir / "agent.log",
                        run_dir=run_dir, env=env, progress=lambda message: None, reprompt_margin_s=0.0)


def test_config_is_isolated_and_trusts_the_workdir(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    box = NoSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + 60))
    agent = GeminiAgent(model="google:gemini-2.5-pro")
    ctx = make_context(tmp_path, box, fake_url="http://127.0.0.1:9")
    env = agent.write_config(ctx, agent.config_dir(ctx))
    home = workdir / ".agent" / "gemini"
    assert env["HOME"] == env["GEMINI_CLI_HOME"] == str(home)
    assert env["GEMINI_API_KEY"] == "test-key" and env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9"
    settings = json.loads((home / ".gemini" / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert json.loads((home / ".gemini" / "trustedFolders.json").read_text()) == {str(workdir): "TRUST_FOLDER"}
    argv = agent.argv(ctx, "- report nDCG@10, not \\@x", first=True)
    assert argv == ["gemini", "--yolo", "--output-format", "stream-json", "--model", "gemini-2.5-pro",
                    "--prompt=- report nDCG\\@10, not \\@x"]


def test_reprompt_without_resume_summarises_the_previous_session(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    box = NoSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + 60))
    agent = GeminiAgent()
    parse_all(agent, RECORDED)
    agent._resume = False  # as if the installed CLI had no --resume
    argv = agent.argv(make_context(tmp_path, box), "You have 30 minutes left.", first=False)
    assert "--resume" not in argv
    prompt = argv[-1].removeprefix("--prompt=")
    assert prompt.startswith("You have 30 minutes left.")
    assert "ran run_shell_command" in prompt and "echo 42 > answer.txt" in prompt and "said: The answer is 42" in prompt


PROMPT = "Create proof.txt in the working directory; the metric is nDCG@10, see @proof.txt."


# -- the real CLI ---------------------------------------------------------------------------------
COMMAND = f"echo made-by-gemini > proof.txt && env > seen_env.txt; {LEAK_PROBE}"


def gemini_version() -> str:
    return subprocess.run(["gemini", "--version"], capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.mark.cli
@pytest.mark.skipif(shutil.which("gemini") is None,
                    reason="Gemini CLI not installed: npm install -g @google/gemini-cli")
@pytest.mark.parametrize("kind, model", [pytest.param("bwrap", None, marks=pytest.mark.bwrap),
                                         ("docker", "gemini-2.5-flash"), ("none", "gemini-2.5-flash")])
def test_real_gemini_cli_runs_a_command_in_the_sandbox(kind, model, tmp_path):
    """With no model the CLI routes each turn through a classifier call first (a side call the fake
    answers off-script); with one it sends --model and calls only that model."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    script = [Turn(text="I'll create the file.", tool_calls=[("run_shell_command", {"command": COMMAND})]),
              Turn(text="Created proof.txt."),
              Turn(text="Nothing left to improve.")]  # answers the re-prompt
    with FakeLLM(script) as fake:
        with gated_sandbox(kind, workdir, fake, readonly_extra=GeminiAgent().readonly_mounts(),
                           providers=GeminiAgent.gateway_providers) as (box, gateway, env):
            agent = GeminiAgent(model=model)
            agent.max_turns = 2  # the first prompt and one re-prompt
            ctx = make_context(tmp_path, box, env=env)
            outcome = agent.run(ctx)
        requests = list(fake.requests)
        assert_only_the_gateway_reached_the_fake(fake, gateway)

    raw = ctx.raw_log.read_text(errors="replace")
    assert outcome.exit_reason == "finished", f"{outcome} (gemini {gemini_version()}, {kind})\n{raw[-3000:]}"
    assert outcome.turns == 2
    assert (workdir / "proof.txt").read_text().strip() == "made-by-gemini"
    seen_env = (workdir / "seen_env.txt").read_text()
    assert "GEMINI_CLI_HOME=" in seen_env and gateway.token not in seen_env  # even the token stays out of its commands
    if kind != "none":
        assert_no_real_key_inside(workdir, gateway.token)

    events = read_trace(ctx.run_dir / "trace.jsonl")
    calls = [e for e in events if e.kind == "tool_call"]
    results = [e for e in events if e.kind == "tool_result"]
    assert [(c.tool, c.args["command"]) for c in calls] == [("run_shell_command", COMMAND)]
    assert [(r.call_id, r.tool, r.is_error) for r in results] == [(calls[0].call_id, "run_shell_command", False)]
    assert [e.text for e in events if e.kind == "assistant"] == ["I'll create the file.", "Created proof.txt.",
                                                                 "Nothing left to improve."]
    usages = [e.usage for e in events if e.kind == "usage"]
    side_calls = [r for r in requests if ":generateContent" in r["path"]]
    assert len(usages) == 2  # one per CLI run
    # three scripted calls (11 in, 7 out each) and the side calls (5 in, 3 out each), all counted once
    total_in, total_out = (sum(getattr(u, f) for u in usages) for f in ("input_tokens", "output_tokens"))
    assert (total_in, total_out) == (3 * 11 + 5 * len(side_calls), 3 * 7 + 3 * len(side_calls))
    assert [e.kind for e in events if e.kind == "user"] == ["user", "user"]  # the prompt and the re-prompt

    streams = [r for r in requests if ":streamGenerateContent" in r["path"]]
    if model is not None:
        assert all(f"/models/{model}:" in r["path"] for r in streams) and not side_calls
    else:
        assert side_calls and all("responseJsonSchema" in r["body"]["generationConfig"] for r in side_calls)
    assert all(r["headers"].get("x-goog-api-key") == REAL_KEYS["gemini"] for r in requests)
    # the re-prompt resumed the session: its request carries the first turn's tool call in its history
    history = streams[-1]["body"]["contents"]
    assert any(part.get("functionCall", {}).get("name") == "run_shell_command"
               for content in history for part in content["parts"])
    assert history[-1]["parts"][-1]["text"].startswith("You have about")
    first_prompt = [p["text"] for p in streams[0]["body"]["contents"][0]["parts"] if "text" in p]
    assert first_prompt[-1].endswith("the metric is nDCG\\@10, see \\@proof.txt.")  # literal: no file inlined
