"""The single-file harness: the fixed adapter is hash-checked on the host, the file runs as a process inside the
sandbox (never imported by the host), its events reach the trace, and crashes, hangs and overruns are recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoembed.agents.base import TrialContext
from autoembed.agents.harness import (BANNER, FIXED_ADAPTER_SHA256, HarnessAgent, HarnessError, adapter_hash,
                                      check_harness, literal_constant)
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.bwrap import BwrapSandbox, bwrap_problem
from autoembed.sandbox.none import NoSandbox
from autoembed.trace import TraceWriter, read_trace

BASELINE = Path(__file__).resolve().parents[1] / "harnesses" / "baseline.py"
needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")


def test_baseline_adapter_hash_is_pinned():
    assert adapter_hash(BASELINE.read_text()) == FIXED_ADAPTER_SHA256
    assert literal_constant(check_harness(BASELINE), "MODEL").startswith("anthropic:")


def test_edited_adapter_is_refused(tmp_path):
    edited = tmp_path / "h.py"
    edited.write_text(BASELINE.read_text() + "\n# sneaky\n")
    with pytest.raises(HarnessError, match="fixed adapter"):
        HarnessAgent(edited)
    no_banner = tmp_path / "n.py"
    no_banner.write_text(BASELINE.read_text().replace(BANNER, "# gone"))
    with pytest.raises(HarnessError, match="banner"):
        HarnessAgent(no_banner)


def test_the_host_never_runs_the_harness_file(tmp_path):
    """Top-level code above the banner runs only inside the sandbox: making the agent runs none of it."""
    canary = tmp_path / "ran-on-the-host"
    path = _harness_with(tmp_path, f"open({str(canary)!r}, 'w').write('x')\nMAX_TURNS = 7\n")
    agent = HarnessAgent(path, model=_script(tmp_path, []))
    assert not canary.exists()
    assert literal_constant(agent.source, "MAX_TURNS") == 7 and agent.model.startswith("scripted:")
    with pytest.raises(HarnessError, match="no script file"):
        HarnessAgent(path, model="scripted:/nowhere.json")


def test_model_must_be_a_literal_or_given(tmp_path):
    path = _harness_with(tmp_path, "MODEL = 'anthropic:' + 'x'\n")
    with pytest.raises(HarnessError, match="MODEL"):
        HarnessAgent(path)
    assert HarnessAgent(path, model="openai:gpt-4o").model == "openai:gpt-4o"


def _ctx(tmp_path, agent: HarnessAgent, seconds=600.0, sandbox: str = "none"):
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    config = SandboxConfig(workdir=workdir, deadline=time.time() + seconds, readonly_extra=agent.readonly_mounts())
    box = NoSandbox(config) if sandbox == "none" else BwrapSandbox(config)
    if sandbox != "none":
        box.start()
    return TrialContext(workdir=workdir, sandbox=box, deadline=box.config.deadline, prompt="train a model",
                        model=None, trace=TraceWriter(tmp_path / "trace.jsonl", "harness"),
                        raw_log=tmp_path / "raw.log", run_dir=tmp_path, progress=lambda m: None)


def _run(tmp_path, agent: HarnessAgent, **kw):
    ctx = _ctx(tmp_path, agent, **kw)
    try:
        return ctx, agent.run(ctx)
    finally:
        ctx.sandbox.stop()


def _harness_with(tmp_path, body: str) -> Path:
    editable, adapter = BASELINE.read_text().split(BANNER, 1)
    path = tmp_path / "harness.py"
    path.write_text(editable + body + "\n\n" + BANNER + adapter)
    return path


def _script(tmp_path, script) -> str:
    (tmp_path / "script.json").write_text(json.dumps(script))
    return f"scripted:{tmp_path / 'script.json'}"


@needs_bwrap
def test_scripted_loop_runs_inside_bwrap_and_traces_its_tools(tmp_path):
    script = [
        {"text": "Checking time.", "tool_calls": [{"name": "timer", "arguments": {}}]},
        {"tool_calls": [{"name": "bash", "arguments": {"command": "echo trained > proof.txt && cat proof.txt && pwd"}}]},
        {"tool_calls": [{"name": "write_file", "arguments": {"path": "../escape.txt", "content": "out"}}]},
        {"tool_calls": [{"name": "read_file", "arguments": {"path": str(tmp_path / "secret.txt")}}]},
        {"tool_calls": [{"name": "bash", "arguments": {"command": "python3 -c \"print('x' * 50000)\""}}]},
        {"text": "All done."},
    ]
    (tmp_path / "secret.txt").write_text("host secret")
    ctx, outcome = _run(tmp_path, HarnessAgent(BASELINE, model=_script(tmp_path, script)), sandbox="bwrap")
    assert outcome.exit_reason == "finished" and outcome.turns == 6, outcome.detail
    assert (ctx.workdir / "proof.txt").read_text().strip() == "trained"
    events = read_trace(tmp_path / "trace.jsonl")
    calls = [e for e in events if e.kind == "tool_call"]
    results = [e for e in events if e.kind == "tool_result"]
    assert [c.tool for c in calls] == ["timer", "bash", "write_file", "read_file", "bash"]
    assert "minutes left" in results[0].text and "trained\n/workdir" in results[1].text  # it ran inside
    assert results[2].is_error and results[3].is_error, "the file tools reached outside the sandbox's workdir"
    assert not (tmp_path / "escape.txt").exists() and "host secret" not in results[3].text
    assert ".outputs/output-0001.txt" in results[4].text and len(results[4].text) < 12_000
    assert (ctx.workdir / ".outputs" / "output-0001.txt").read_text().count("x") == 50000
    assert any(e.kind == "assistant" and e.text == "All done." for e in events)
    assert all(e.source == "harness" for e in events)
    raw = [json.loads(line) for line in ctx.raw_log.read_text().splitlines()]
    assert [r["type"] for r in raw if r["type"] != "output"] == ["response", "tool_result"] * 5 + ["response"]


def test_crashing_harness_is_recorded_with_its_traceback(tmp_path):
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n    print('said before dying')\n"
                                   "    raise ValueError('boom in the loop')\n")
    _, outcome = _run(tmp_path, HarnessAgent(path, model=_script(tmp_path, [])))
    assert outcome.exit_reason == "crashed" and "boom in the loop" in outcome.detail
    assert "said before dying" in outcome.detail
    assert any(e.kind == "error" and "boom" in e.text for e in read_trace(tmp_path / "trace.jsonl"))


def test_hung_harness_is_killed_at_the_deadline_with_its_stack(tmp_path, monkeypatch):
    import autoembed.agents.harness as harness_mod

    monkeypatch.setattr(harness_mod, "GRACE_S", 0.5)
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n    import time\n    time.sleep(3600)\n")
    start = time.time()
    _, outcome = _run(tmp_path, HarnessAgent(path, model=_script(tmp_path, [])), seconds=3.0)
    assert time.time() - start < 15
    assert outcome.exit_reason == "deadline" and "run_task" in outcome.detail, outcome.detail


def test_harness_that_swallows_exceptions_still_stops_at_the_deadline(tmp_path):
    """A loop that swallows every Exception still stops: the runtime's stop is a BaseException, checked by every tool."""
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n    while True:\n        try:\n"
                                   "            env.read_file('instructions.md')\n        except Exception:\n"
                                   "            pass\n")
    start = time.time()
    ctx, outcome = _run(tmp_path, HarnessAgent(path, model=_script(tmp_path, [])), seconds=2.0)
    assert outcome.exit_reason == "deadline" and "stopped at the deadline" in outcome.detail, outcome.detail
    assert time.time() - start < 10


def test_forged_or_malformed_events_are_recorded_as_such(tmp_path):
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n"
                                   "    env._send({'trace': {'kind': 'root', 'text': 'x'}})\n"
                                   "    env._channel.write('not json\\n'); env._channel.flush()\n"
                                   "    print('{\"result\": {\"turns\": 99}}')\n"
                                   "    return 2\n")
    _, outcome = _run(tmp_path, HarnessAgent(path, model=_script(tmp_path, [])))
    assert outcome.exit_reason == "finished" and outcome.turns == 2  # the print went to the log, not the channel
    errors = [e.text for e in read_trace(tmp_path / "trace.jsonl") if e.kind == "error"]
    assert any("unknown event kind 'root'" in t for t in errors) and any("not json" in t for t in errors)


def test_lone_surrogates_on_the_channel_are_logged_not_fatal(tmp_path):
    """JSON may carry a lone surrogate (\\ud800) that UTF-8 cannot encode: the host logs it escaped and reads on."""
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n"
                                   "    env._channel.write('{\"raw\": {\"text\": \"\\\\ud800\"}}\\n')\n"
                                   "    env._channel.write('{\"trace\": {\"kind\": \"assistant\", \"text\": \"\\\\udfff\"}}\\n')\n"
                                   "    env._channel.flush()\n"
                                   "    return 1\n")
    _, outcome = _run(tmp_path, HarnessAgent(path, model=_script(tmp_path, [])))
    assert outcome.exit_reason == "finished" and outcome.turns == 1
    assert '{"text": "\\ud800"}' in (tmp_path / "raw.log").read_text()
    assert [e.text for e in read_trace(tmp_path / "trace.jsonl") if e.kind == "assistant"] == ["\udfff"]
