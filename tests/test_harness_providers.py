"""A full harness trial through each real provider SDK (issue 4): autoembed.trial.run.run() seeds a tiny task, starts
bwrap, runs harnesses/baseline.py as a process inside it with its model pointed (by the providers' base-URL
environment variables, the only ones it gets) at the fake LLM server on 127.0.0.1, which asks for one bash command;
the command must run inside the sandbox, the trace and usage must be recorded, and the next request must carry
the command's output. (Until the gateway lands, a harness with a real provider gets the host's network.)
Then faults at trial level: a 429 with a short retry-after is waited out and the trial completes; a 401 ends
the trial at once as crashed, with the reason in meta.json, and the trial is still scored (as the base model).

The sandbox is bwrap where it works here, else `none` (the test names which in its id).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoembed.sandbox.bwrap import bwrap_problem
from autoembed.trace import read_trace
from tests.fakellm import FakeLLM, Fault, Turn
from tests.tiny_task import keyless_tiny_task

BASELINE = Path(__file__).resolve().parents[1] / "harnesses" / "baseline.py"
SANDBOX = "bwrap" if bwrap_problem() is None else "none"
HOURS = 0.05  # 180 s: the baseline stops starting turns 120 s before the deadline, so this leaves ~60 s of turns
MARK = "provider-check-7f3a"
COMMAND = f"python3 -c \"open('final_note.txt','w').write('ok'); print('{MARK}')\""

# provider -> (model string, environment that points its SDK at the fake server; {url} is filled in)
PROVIDERS = {
    "anthropic": ("anthropic:claude-sonnet-4-6", {"ANTHROPIC_BASE_URL": "{url}", "ANTHROPIC_API_KEY": "sk-ant-test"}),
    "openai": ("openai:gpt-4o", {"OPENAI_BASE_URL": "{url}/v1", "OPENAI_API_KEY": "sk-test"}),
    "openai-responses": ("openai-responses:gpt-4o", {"OPENAI_BASE_URL": "{url}/v1", "OPENAI_API_KEY": "sk-test"}),
    "google": ("google:gemini-2.5-flash", {"GOOGLE_GEMINI_BASE_URL": "{url}", "GEMINI_API_KEY": "test-key"}),
}


@pytest.fixture
def trial_env(tmp_path_factory, monkeypatch):
    """A tiny task (built once per session) and a harness-side home shared by the session (seed manifests,
    the cached base-model scores), so only the first trial pays for scoring the base model."""
    return keyless_tiny_task(tmp_path_factory, monkeypatch)


def point_at(fake: FakeLLM, provider: str, monkeypatch) -> str:
    model, env = PROVIDERS[provider]
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(url=fake.url))
    return model


def harness_trial(task: Path, model: str, out: Path):
    from autoembed.trial.run import run

    # check_key=False: these tests script the provider's every reply (a 401 among them) for the trial itself; the
    # preflight's own key check is tested in test_preflight.py
    return run(f"harness:{BASELINE}", task=str(task), hours=HOURS, sandbox=SANDBOX, model=model, out=out,
               progress=lambda line: None, check_key=False)


def tool_result_in(provider: str, body: dict) -> str:
    """The tool output the harness sent back in a follow-up request, read from the provider's wire format."""
    if provider == "anthropic":
        return json.dumps([b for m in body["messages"] for b in (m["content"] if isinstance(m["content"], list) else [])
                           if b.get("type") == "tool_result"])
    if provider == "openai":
        return json.dumps([m for m in body["messages"] if m.get("role") == "tool"])
    if provider == "openai-responses":
        return json.dumps([i for i in body["input"] if i.get("type") == "function_call_output"])
    return json.dumps([p for c in body["contents"] for p in c.get("parts", []) if "functionResponse" in p])


def conversation_requests(fake: FakeLLM) -> list[dict]:
    return [r for r in fake.requests if r["method"] == "POST" and "count_tokens" not in r["path"]
            and "countTokens" not in r["path"]]


@pytest.mark.parametrize("provider", list(PROVIDERS), ids=[f"{p}-{SANDBOX}" for p in PROVIDERS])
def test_harness_trial_completes_through_provider(provider, trial_env, tmp_path, monkeypatch):
    script = [Turn(text="I will leave a note.", tool_calls=[("bash", {"command": COMMAND})], input_tokens=120,
                   output_tokens=30),
              Turn(text="Done: the note is written.", input_tokens=200, output_tokens=12)]
    with FakeLLM(script) as fake:
        model = point_at(fake, provider, monkeypatch)
        result = harness_trial(trial_env, model, tmp_path / "run")

    run_dir = tmp_path / "run"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["exit_reason"] == "finished", meta.get("exit_detail")
    assert meta["turns"] == 2 and meta["sandbox"]["kind"] == SANDBOX
    assert (run_dir / "workdir" / "final_note.txt").read_text() == "ok"

    events = read_trace(run_dir / "trace.jsonl")
    [call] = [e for e in events if e.kind == "tool_call"]
    [output] = [e for e in events if e.kind == "tool_result"]
    assert call.tool == "bash" and call.args["command"] == COMMAND
    assert output.call_id == call.call_id and not output.is_error and "exit 0" in output.text and MARK in output.text
    assert any(e.kind == "assistant" and e.text == "Done: the note is written." for e in events)

    usages = [e.usage for e in events if e.kind == "usage"]
    assert len(usages) == 2 and sum(u.output_tokens for u in usages) == 42
    assert meta["usage"]["output_tokens"] == 42 and meta["usage"]["input_tokens"] > 0
    assert meta["usage"]["cost_usd"] is not None and meta["usage"]["cost_usd"] > 0

    requests = conversation_requests(fake)
    assert len(requests) == 2, [r["path"] for r in requests]
    assert MARK not in tool_result_in(provider, requests[0]["body"])
    assert MARK in tool_result_in(provider, requests[1]["body"]), "the follow-up request lacks the tool's output"
    assert result.score is not None and (run_dir / "score.json").is_file()


def test_rate_limit_with_retry_after_is_waited_out(trial_env, tmp_path, monkeypatch):
    script = [Turn(tool_calls=[("bash", {"command": COMMAND})]), Turn(text="Done.")]
    with FakeLLM(script, faults=[Fault("status", 429, retry_after=0.5)]) as fake:
        model = point_at(fake, "anthropic", monkeypatch)
        start = time.time()
        harness_trial(trial_env, model, tmp_path / "run")
        elapsed = time.time() - start

    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["exit_reason"] == "finished", meta.get("exit_detail")
    assert (tmp_path / "run" / "workdir" / "final_note.txt").read_text() == "ok"
    assert fake.fault_log == ["429"] and len(conversation_requests(fake)) == 3
    assert elapsed >= 0.5
    # the harness process (inside the sandbox) logs its retries to its stderr, which agent.log keeps
    output = [json.loads(line).get("text") or "" for line in (tmp_path / "run" / "agent.log").read_text().splitlines()]
    retried = [line for line in output if "rate limited" in line and "retrying in 0.5" in line]
    assert retried, output


def test_bad_key_ends_the_trial_as_crashed_with_a_clear_reason(trial_env, tmp_path, monkeypatch):
    body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    with FakeLLM([Turn(text="never sent")], faults=[Fault("status", 401, body=body)]) as fake:
        model = point_at(fake, "anthropic", monkeypatch)
        start = time.time()
        result = harness_trial(trial_env, model, tmp_path / "run")
        elapsed = time.time() - start

    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["exit_reason"] == "crashed"
    assert "bad or missing ANTHROPIC_API_KEY (HTTP 401: invalid x-api-key)" in meta["exit_detail"]
    assert len(conversation_requests(fake)) == 1, "a 401 must not be retried"
    assert meta["agent_seconds"] < 30 and elapsed < HOURS * 3600 / 2, "the trial waited instead of failing at once"
    errors = [e for e in read_trace(tmp_path / "run" / "trace.jsonl") if e.kind == "error"]
    assert errors and "ANTHROPIC_API_KEY" in errors[0].text
    # still scored: no final_model/, so as the base model, and score.json says why
    assert meta["status"] == "scored" and meta["final_model"] is None
    assert result.score["scored_as"] == "base_model"
    assert any("final_model" in reason for reason in result.score["reasons"])
