"""AnthropicLLM through the real anthropic SDK against the fake Messages API on 127.0.0.1."""

from __future__ import annotations

import logging
import time

import pytest

from autoembed.llm import retry
from autoembed.llm.anthropic_llm import AnthropicLLM, to_anthropic_messages
from autoembed.llm.base import LLMError, Message, ToolCall, ToolSpec
from autoembed.llm.pricing import estimate_cost
from autoembed.llm.registry import get_llm
from autoembed.trace import Usage
from tests.fakellm import Fault, FakeLLM, Turn

MODEL = "claude-sonnet-4-6"  # priced by the claude-sonnet-4 prefix; 4-5 draws an SDK deprecation warning
BASH = ToolSpec("bash", "Run a shell command", {"type": "object", "properties": {"command": {"type": "string"}},
                                                 "required": ["command"]})


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(retry, "BASE_WAIT_S", 0.01)


def make_llm(fake: FakeLLM, **kwargs) -> AnthropicLLM:
    return AnthropicLLM(MODEL, api_key="sk-ant-fake", base_url=fake.url, **kwargs)


def messages_calls(fake: FakeLLM) -> list[dict]:
    return [r for r in fake.requests if r["path"].startswith("/v1/messages")]


def test_tool_round_trip_usage_cost_and_cache_markers():
    script = [Turn(tool_calls=[("bash", {"command": "ls -la"})], input_tokens=100, output_tokens=20),
              Turn(text="The folder has 3 files.", input_tokens=30, output_tokens=9)]
    with FakeLLM(script) as fake:
        llm = make_llm(fake)
        convo = [Message("user", text="What is in the folder?")]
        first = llm.complete(convo, system="You are terse.", tools=[BASH])
        assert first.text is None and first.stop_reason == "tool_use"
        (call,) = first.tool_calls
        assert call.name == "bash" and call.arguments == {"command": "ls -la"} and call.id.startswith("toolu_")
        convo += [Message("assistant", tool_calls=first.tool_calls),
                  Message("tool", text="a\nb\nc", tool_call_id=call.id, name="bash")]
        second = llm.complete(convo, system="You are terse.", tools=[BASH])
        assert second.text == "The folder has 3 files." and not second.tool_calls and second.stop_reason == "end_turn"

        sent = [r["body"] for r in messages_calls(fake)]
    assert len(sent) == 2
    # the tool result went back as a tool_result block answering the tool_use id, after the tool_use turn
    assert sent[1]["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": call.id, "name": "bash", "input": {"command": "ls -la"}}]}
    result_block = sent[1]["messages"][2]["content"][0]
    assert result_block["type"] == "tool_result" and result_block["tool_use_id"] == call.id
    assert result_block["content"] == "a\nb\nc"
    assert sent[0]["tools"][0]["input_schema"] == BASH.parameters
    # prompt caching: breakpoints on the system prompt, the last tool and the last message block
    for body in sent:
        assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    # the fake simulates the cache: the first call writes the prefix, the second reads it
    assert first.usage.cache_write_tokens > 0 and first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens == first.usage.cache_write_tokens and second.usage.cache_write_tokens == 0
    assert (first.usage.input_tokens, first.usage.output_tokens) == (100, 20)
    assert (second.usage.input_tokens, second.usage.output_tokens) == (30, 9)
    # cost by hand from the sonnet-4 prices ($3 in, $15 out, $0.30 cache read, $3.75 cache write per Mtok)
    cached = first.usage.cache_write_tokens
    assert first.usage.cost_usd == pytest.approx((100 * 3 + 20 * 15 + cached * 3.75) / 1e6)
    assert second.usage.cost_usd == pytest.approx((30 * 3 + 9 * 15 + cached * 0.30) / 1e6)
    total = llm.total_usage
    assert (total.input_tokens, total.output_tokens, total.cache_read_tokens, total.cache_write_tokens) == (
        130, 29, cached, cached)
    assert total.cost_usd == pytest.approx(first.usage.cost_usd + second.usage.cost_usd)


def test_registry_builds_it_from_a_model_string(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    with FakeLLM([Turn(text="hello")]) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        llm = get_llm(f"anthropic:{MODEL}")
        assert isinstance(llm, AnthropicLLM) and llm.model == MODEL
        assert llm.complete([Message("user", text="hi")]).text == "hello"
        # the key from the environment reached the server (this SDK sends it as x-api-key or a bearer token)
        auth = {k.lower(): v for k, v in fake.requests[0]["headers"].items() if k.lower() in ("x-api-key", "authorization")}
        assert auth and all(v.endswith("sk-ant-fake") for v in auth.values()), auth


@pytest.mark.parametrize("fault, logged", [
    (Fault("status", status=529, body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
     "overloaded (HTTP 529)"),
    (Fault("status", status=503), "server error (HTTP 503)"),
    (Fault("hang", seconds=3.0), "timed out after 0.5s"),
    (Fault("drop"), "connection to"),
])
def test_transient_faults_are_retried_and_logged(fault, logged, caplog):
    with FakeLLM([Turn(text="recovered")], faults=[fault]) as fake:
        llm = make_llm(fake, timeout=0.5)
        with caplog.at_level(logging.WARNING, logger="autoembed.llm"):
            response = llm.complete([Message("user", text="hi")])
        assert response.text == "recovered"
        assert len(messages_calls(fake)) == 2  # the faulted attempt, then the retry
    warnings = [r.getMessage() for r in caplog.records if r.name == "autoembed.llm"]
    assert len(warnings) == 1 and "attempt 1" in warnings[0] and logged in warnings[0], warnings


def test_rate_limit_waits_for_retry_after(caplog):
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    faults = [Fault("status", status=429, retry_after=0.2, body=body)] * 2
    with FakeLLM([Turn(text="ok")], faults=faults) as fake:
        llm = make_llm(fake)
        with caplog.at_level(logging.WARNING, logger="autoembed.llm"):
            start = time.monotonic()
            assert llm.complete([Message("user", text="hi")]).text == "ok"
            elapsed = time.monotonic() - start
        assert len(messages_calls(fake)) == 3
    assert elapsed >= 0.4  # two waits of retry-after 0.2 s (the backoff alone would be ~0.01 s)
    warnings = [r.getMessage() for r in caplog.records if r.name == "autoembed.llm"]
    assert len(warnings) == 2 and all("rate limited (HTTP 429)" in w and "retrying in 0.2s" in w for w in warnings)


def test_bad_key_fails_at_once_without_retries(caplog):
    body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    with FakeLLM([Turn(text="never")], faults=[Fault("status", status=401, body=body)]) as fake:
        llm = make_llm(fake)
        with caplog.at_level(logging.WARNING, logger="autoembed.llm"), pytest.raises(LLMError) as err:
            llm.complete([Message("user", text="hi")])
        assert len(fake.requests) == 1
    assert "bad or missing ANTHROPIC_API_KEY" in str(err.value) and "invalid x-api-key" in str(err.value)
    assert not [r for r in caplog.records if r.name == "autoembed.llm"]
    assert llm.total_usage == Usage()


def test_context_too_long_fails_at_once():
    body = {"type": "error", "error": {"type": "invalid_request_error",
                                       "message": "prompt is too long: 210000 tokens > 200000 maximum"}}
    with FakeLLM([Turn(text="never")], faults=[Fault("status", status=400, body=body)]) as fake:
        with pytest.raises(LLMError, match="context too long"):
            make_llm(fake).complete([Message("user", text="hi")])
        assert len(fake.requests) == 1


def test_gives_up_after_max_attempts():
    with FakeLLM([Turn(text="never")], faults=[Fault("status", status=500)] * 5) as fake:
        with pytest.raises(retry.TransientError, match="HTTP 500"):
            make_llm(fake, max_attempts=3).complete([Message("user", text="hi")])
        assert len(fake.requests) == 3


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(LLMError, match="ANTHROPIC_API_KEY"):
        AnthropicLLM(MODEL)


def test_message_conversion_merges_user_side_turns():
    calls = [ToolCall("t1", "bash", {"command": "a"}), ToolCall("t2", "read", {"path": "b"})]
    out = to_anthropic_messages([
        Message("user", text="go"),
        Message("assistant", text="Two things.", tool_calls=calls),
        Message("tool", text="A", tool_call_id="t1", name="bash"),
        Message("tool", text="", tool_call_id="t2", name="read"),
        Message("user", text="3 minutes left"),
    ])
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert out[1]["content"] == [{"type": "text", "text": "Two things."},
                                 {"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "a"}},
                                 {"type": "tool_use", "id": "t2", "name": "read", "input": {"path": "b"}}]
    assert out[2]["content"] == [{"type": "tool_result", "tool_use_id": "t1", "content": "A"},
                                 {"type": "tool_result", "tool_use_id": "t2", "content": "(no output)"},
                                 {"type": "text", "text": "3 minutes left"}]
    with pytest.raises(LLMError, match="tool_call_id"):
        to_anthropic_messages([Message("user", text="go"), Message("tool", text="x")])


def test_unknown_model_has_no_cost_but_counts_tokens():
    with FakeLLM([Turn(text="hi", input_tokens=5, output_tokens=2)]) as fake:
        llm = AnthropicLLM("my-local-model", api_key="k", base_url=fake.url, cache=False)
        response = llm.complete([Message("user", text="hi")])
        assert "cache_control" not in str(fake.requests[0]["body"])
    assert response.usage.cost_usd is None and estimate_cost("my-local-model", response.usage) is None
    assert (llm.total_usage.input_tokens, llm.total_usage.output_tokens) == (5, 2)


def test_fake_streams_tool_use_the_sdk_can_assemble():
    """The SSE path (what Claude Code uses) checked with the SDK's own stream accumulator."""
    turn = Turn(text="Running it.", tool_calls=[("Bash", {"command": "echo hi > proof.txt"})], output_tokens=12)
    with FakeLLM([turn]) as fake:
        client = make_llm(fake).client
        with client.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "go"}]) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_message()
    assert kinds[0] == "message_start" and "content_block_delta" in kinds and kinds[-1] == "message_stop"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Running it." and final.content[1].input == {"command": "echo hi > proof.txt"}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 12
