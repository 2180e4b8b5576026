"""A whole trial (autoembed.trial.run) of the real Claude Code CLI in bwrap, its model the fake server behind the trial's
gateway: the agent gets only the gateway's URL and token, the token cap stops it with a readable error, and the
trial record says so (meta.json: gateway summary, usage by the gateway's count, limit_reached; trajectory.json in
ATIF with the model's tool calls and what they returned)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import atif
import pytest

from autoembed.sandbox.bwrap import bwrap_problem
from tests.fakellm import FakeLLM, Turn
from tests.gated import REAL_KEYS
from tests.tiny_task import shared_tiny_task

pytestmark = [pytest.mark.bwrap,
              pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")]
NEEDS_CLAUDE = [pytest.mark.cli, pytest.mark.skipif(shutil.which("claude") is None, reason="Claude Code CLI not installed")]
PROVIDER_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL",
                 "OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL", "GEMINI_API_KEY", "GOOGLE_API_KEY",
                 "GOOGLE_GEMINI_BASE_URL")


def model(body: dict) -> Turn:
    """Two tool calls of 200k prompt tokens each (the fake's simulated cache adds a few 10k): the token cap of 400k lets
    both through (the second reserves its prompt, estimated from the body, and Claude Code's max_tokens on top of the
    first's 200k+) and refuses the third, the cap being spent."""
    if not body.get("tools"):
        return Turn(text="ok", input_tokens=1, output_tokens=1)
    results = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]
               if b.get("type") == "tool_result"]
    command = "echo first-output" if not results else "echo second-output"
    return Turn(tool_calls=[("Bash", {"command": command, "description": "step"})], input_tokens=200_000, output_tokens=7)


def offline_trial_env(tmp_path_factory, monkeypatch) -> Path:
    """A home of the session's own, no hub, no provider key or URL from the host: the tiny task's folder."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("AUTOEMBED_HOME", str(base / "autoembed_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in PROVIDER_VARS:
        monkeypatch.delenv(name, raising=False)
    return shared_tiny_task(base)


@NEEDS_CLAUDE[0]
@NEEDS_CLAUDE[1]
def test_claude_trial_through_the_gateway_stops_at_the_token_cap(tmp_path_factory, tmp_path, monkeypatch):
    task_dir = offline_trial_env(tmp_path_factory, monkeypatch)
    from autoembed.trial.run import run

    with FakeLLM(model) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", REAL_KEYS["anthropic"])
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        result = run("claude", task=str(task_dir), hours=0.03, sandbox="bwrap", out=tmp_path / "run",
                     progress=lambda line: None, max_tokens=400_000)
        tool_calls = [r for r in fake.requests if r["body"].get("tools")]
    meta, run_dir = result.meta, result.run_dir
    gateway = meta["gateway"]
    assert meta["limit_reached"] == "max_tokens" and gateway["stopped_by"] == "max_tokens", gateway
    assert gateway["refused"]["max_tokens"] >= 1 and len(tool_calls) == 2
    assert meta["usage"] == gateway["usage"] and meta["usage"]["input_tokens"] >= 400_000
    # every call reached the model with the real key (the gateway's calls, and preflight's key check from the host,
    # whose urllib capitalizes the header's name)
    assert all({k.lower(): v for k, v in r["headers"].items()}.get("x-api-key") == REAL_KEYS["anthropic"]
               for r in fake.requests)
    assert "limit_reached: max_tokens" in result.summary()
    # the agent read the refusal: Claude Code printed the gateway's message
    assert "token budget is spent" in (run_dir / "agent.log").read_text()
    assert not list((run_dir / "workdir").rglob("gateway.sock")), "the gateway lives outside the workdir"

    trajectory = json.loads((run_dir / "trajectory.json").read_text())
    assert trajectory["schema_version"] == "ATIF-v1.8" and trajectory["session_id"] == meta["run_id"]
    atif.Trajectory.model_validate(trajectory)
    # the CLI's own name and version (claude --version), not autoembed's
    assert trajectory["agent"]["name"] == "claude-code" and trajectory["steps"][0]["source"] == "user"
    assert trajectory["agent"]["version"] == meta["versions"]["agent"]["claude-code"]
    # no --model: the model that answered is named, with its calls and cost
    assert meta["model"] in meta["models"] and meta["models"][meta["model"]]["calls"] == gateway["calls"]
    assert meta["models"][meta["model"]]["usd"] == pytest.approx(meta["spend_usd"])
    assert "cost: $" in result.summary()
    acting = [s for s in trajectory["steps"] if s.get("tool_calls")]
    assert [s["tool_calls"][0]["arguments"]["command"] for s in acting] == ["echo first-output", "echo second-output"]
    # the first result is what Claude sent back to the model; the second never went back (refused): from the trace
    assert [s["observation"]["results"][0]["content"].strip() for s in acting] == ["first-output", "second-output"]
    assert all(s["metrics"]["prompt_tokens"] >= 200_000 for s in acting)
    assert trajectory["final_metrics"]["extra"]["refused_calls"][0]["refused"] == "max_tokens"
    assert trajectory["final_metrics"]["total_prompt_tokens"] == sum(
        s.get("metrics", {}).get("prompt_tokens", 0) for s in trajectory["steps"])


@pytest.mark.slow  # a whole trial (minutes under load); the audit row "cheat the gateway: ..." covers it in CI
def test_a_harness_inside_bwrap_cannot_misuse_the_gateway_or_report_its_own_spend(tmp_path_factory, tmp_path,
                                                                                   monkeypatch):
    """The audit's attack harness (autoembed/integrity/gateway_case.py) as a real harness process in bwrap: forbidden
    provider paths, an unpriced model, 40 concurrent $1.50 calls under a $2 cap, one reply declaring far more than it
    reserved, and cost_usd -1000 on its event channel. Every request is refused, at most one of the 40 goes out, the
    trial is not clean with the gateway's spend past its cap, and the harness's report stays out of the spend."""
    from autoembed.integrity import gateway_case as case
    from autoembed.trial.run import run

    task_dir = offline_trial_env(tmp_path_factory, monkeypatch)
    plan = list(case.UPSTREAM_PLAN)

    def upstream(body: dict) -> Turn:
        usage = plan.pop(0)["usage"] if plan else {"input_tokens": 10, "output_tokens": 5}
        return Turn(text="x", **usage)

    with FakeLLM(upstream) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", REAL_KEYS["anthropic"])
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        result = run(f"harness:{case.attack_harness(tmp_path)}", task=str(task_dir), hours=0.03, sandbox="bwrap",
                     model=case.HARNESS_MODEL, out=tmp_path / "run", progress=lambda line: None, check_key=False,
                     max_usd=case.CAP_USD)
        paths = [r["path"] for r in fake.requests]
    meta = json.loads((result.run_dir / "meta.json").read_text())
    report = json.loads((result.run_dir / "workdir" / case.REPORT).read_text())
    verdicts = case.judge(meta, report, paths)
    assert [v[1] for v in verdicts] == ["blocked", "blocked", "blocked", "detected"], verdicts
    assert paths == ["/v1/messages", "/v1/messages"], paths  # one of the 40, and the over-declaring call
    assert "result: NOT CLEAN" in result.summary() and "spend passed its cap" in result.summary()
    ledger_cost = meta["usage"]["cost_usd"]
    assert ledger_cost == meta["spend_usd"] == meta["gateway"]["usage"]["cost_usd"] > case.CAP_USD
    assert meta["reported_usage"]["cost_usd"] == -1000.0
