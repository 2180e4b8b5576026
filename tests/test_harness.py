"""The single-file harness: the fixed adapter is hash-checked, tools stay inside the workdir, failures are recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoembed.agents.base import TrialContext
from autoembed.agents.harness import (BANNER, FIXED_ADAPTER_SHA256, HarnessAgent, HarnessEnv, HarnessError,
                                      adapter_hash, load_harness)
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.none import NoSandbox
from autoembed.trace import TraceWriter, read_trace

BASELINE = Path(__file__).resolve().parents[1] / "harnesses" / "baseline.py"


def test_baseline_adapter_hash_is_pinned():
    assert adapter_hash(BASELINE.read_text()) == FIXED_ADAPTER_SHA256
    assert load_harness(BASELINE).MODEL.startswith("anthropic:")


def test_edited_adapter_is_refused(tmp_path):
    edited = tmp_path / "h.py"
    edited.write_text(BASELINE.read_text() + "\n# sneaky\n")
    with pytest.raises(HarnessError, match="fixed adapter"):
        load_harness(edited)
    no_banner = tmp_path / "n.py"
    no_banner.write_text(BASELINE.read_text().replace(BANNER, "# gone"))
    with pytest.raises(HarnessError, match="banner"):
        load_harness(no_banner)


def test_editable_part_may_change(tmp_path):
    edited = tmp_path / "h.py"
    edited.write_text(BASELINE.read_text().replace("MAX_TURNS = 200", "MAX_TURNS = 7"))
    assert load_harness(edited).MAX_TURNS == 7


def _ctx(tmp_path, seconds=600.0, sandbox=None):
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    box = sandbox or NoSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + seconds))
    return TrialContext(workdir=workdir, sandbox=box, deadline=box.config.deadline, prompt="train a model",
                        model=None, trace=TraceWriter(tmp_path / "trace.jsonl", "harness"),
                        raw_log=tmp_path / "raw.log", run_dir=tmp_path, progress=lambda m: None)


def test_file_tools_refuse_paths_outside_the_workdir(tmp_path):
    ctx = _ctx(tmp_path)
    env = HarnessEnv(ctx, "scripted:x")
    (tmp_path / "secret.txt").write_text("no")
    (ctx.workdir / "link").symlink_to(tmp_path / "secret.txt")
    for bad in ("../secret.txt", "link", "/etc/passwd", str(tmp_path / "secret.txt")):
        with pytest.raises(HarnessError):
            env.read_file(bad)
    with pytest.raises(HarnessError):
        env.write_file("../escape.txt", "x")
    assert not (tmp_path / "escape.txt").exists()
    assert env.write_file("notes/a.txt", "hello") and env.read_file("notes/a.txt") == "hello"


def test_long_output_is_truncated_and_saved_in_full(tmp_path):
    ctx = _ctx(tmp_path)
    env = HarnessEnv(ctx, "scripted:x")
    shown = env.bash("python3 -c \"print('x' * 50000)\"", limit=1000)
    assert len(shown) < 2000 and ".outputs/output-0001.txt" in shown
    assert (ctx.workdir / ".outputs" / "output-0001.txt").read_text().count("x") == 50000


def _harness_with(tmp_path, body: str) -> Path:
    source = BASELINE.read_text()
    editable, adapter = source.split(BANNER, 1)
    path = tmp_path / "harness.py"
    path.write_text(editable + body + "\n\n" + BANNER + adapter)
    return path


def test_crashing_harness_is_recorded_with_traceback(tmp_path):
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n    raise ValueError('boom in the loop')\n")
    ctx = _ctx(tmp_path)
    outcome = HarnessAgent(path, model=_script(tmp_path, [])).run(ctx)
    assert outcome.exit_reason == "crashed" and "boom in the loop" in outcome.detail
    assert any(e.kind == "error" and "boom" in e.text for e in read_trace(tmp_path / "trace.jsonl"))


def test_hung_harness_is_stopped_at_the_deadline(tmp_path, monkeypatch):
    import autoembed.agents.harness as harness_mod

    monkeypatch.setattr(harness_mod, "GRACE_S", 0.5)
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n    import time\n    time.sleep(3600)\n")
    ctx = _ctx(tmp_path, seconds=2.0)
    start = time.time()
    outcome = HarnessAgent(path, model=_script(tmp_path, [])).run(ctx)
    assert time.time() - start < 10
    assert outcome.exit_reason == "deadline" and "time.sleep" in outcome.detail


def _script(tmp_path, script) -> str:
    (tmp_path / "script.json").write_text(json.dumps(script))
    return f"scripted:{tmp_path / 'script.json'}"


def test_scripted_loop_runs_tools_in_the_sandbox_and_traces_them(tmp_path):
    script = [
        {"text": "Checking time.", "tool_calls": [{"name": "timer", "arguments": {}}]},
        {"tool_calls": [{"name": "bash", "arguments": {"command": "echo trained > proof.txt && cat proof.txt"}}]},
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "../../etc/passwd"}}]},
        {"text": "All done."},
    ]
    ctx = _ctx(tmp_path)
    outcome = HarnessAgent(BASELINE, model=_script(tmp_path, script)).run(ctx)
    assert outcome.exit_reason == "finished" and outcome.turns == 4
    assert (ctx.workdir / "proof.txt").read_text().strip() == "trained"
    events = read_trace(tmp_path / "trace.jsonl")
    calls = [e for e in events if e.kind == "tool_call"]
    results = [e for e in events if e.kind == "tool_result"]
    assert [c.tool for c in calls] == ["timer", "bash", "read_file"]
    assert "minutes left" in results[0].text and "trained" in results[1].text
    assert results[2].is_error and "outside" in results[2].text
    assert events[-1].kind == "usage" or any(e.kind == "assistant" and e.text == "All done." for e in events)


def test_raw_log_holds_every_response_and_tool_output(tmp_path):
    script = [{"tool_calls": [{"name": "bash", "arguments": {"command": "echo raw-proof"}}]}, {"text": "done"}]
    ctx = _ctx(tmp_path)
    HarnessAgent(BASELINE, model=_script(tmp_path, script)).run(ctx)
    lines = [json.loads(line) for line in ctx.raw_log.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["response", "tool_result", "response"]
    assert "raw-proof" in lines[1]["output"] and lines[2]["text"] == "done"


def test_overrunning_harness_makes_no_calls_after_the_deadline(tmp_path, monkeypatch):
    """A loop that swallows every Exception still stops: the stop signal is a BaseException."""
    import autoembed.agents.harness as harness_mod

    monkeypatch.setattr(harness_mod, "GRACE_S", 0.2)
    path = _harness_with(tmp_path, "def run_task(env, llm, tools):\n    while True:\n        try:\n"
                                   "            env.bash('true')\n        except Exception:\n            pass\n")
    ctx = _ctx(tmp_path, seconds=1.5)
    outcome = HarnessAgent(path, model=_script(tmp_path, [])).run(ctx)
    assert outcome.exit_reason == "deadline"
    time.sleep(1.0)
    calls_then = len(ctx.sandbox._procs)
    time.sleep(1.0)
    assert len(ctx.sandbox._procs) == calls_then
