"""OpenAILLM through the real openai SDK against the fake server on 127.0.0.1: tool calls, usage and cost,
the retry policy under injected faults, fail-fast errors, and a local OpenAI-compatible endpoint."""

from __future__ import annotations

import logging
import time

import openai
import pytest

from autoembed.llm import retry
from autoembed.llm.base import LLMError, Message, ToolSpec
from autoembed.llm.openai_llm import LOCAL_KEY_PLACEHOLDER, OpenAILLM
from autoembed.llm.pricing import PRICES
from autoembed.llm.registry import get_llm
from tests.fakellm import FakeLLM, Fault, Turn

BASH = ToolSpec("bash", "Run a shell command", {"type": "object", "properties": {"command": {"type": "string"}},
                                                "required": ["command"]})
MODEL = "gpt-4o"


def expected_cost(model: str, uncached: int, out: int, cached: int) -> float:
    """Independent of pricing.estimate_cost: straight from the price table."""
    price_in, price_out, price_read, _ = PRICES[model]
    return (uncached * price_in + out * price_out + cached * price_read) / 1e6


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(retry, "BASE_WAIT_S", 0.01)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make_llm(fake: FakeLLM, api: str = "chat", **kwargs) -> OpenAILLM:
    return OpenAILLM(MODEL, api=api, api_key="sk-test", base_url=fake.url + "/v1", **kwargs)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_tool_call_round_trip_sums_usage_and_cost(api):
    script = [Turn(text="Let me look.", tool_calls=[("bash", {"command": "ls -la"})], input_tokens=20,
                   output_tokens=9, cache_read_tokens=64),
              Turn(text="There are two files.", input_tokens=30, output_tokens=5)]
    with FakeLLM(script) as fake:
        llm = make_llm(fake, api)
        history = [Message("user", text="What is in the folder?")]
        first = llm.complete(history, system="You are terse.", tools=[BASH], max_tokens=123)
        assert first.text == "Let me look."
        [call] = first.tool_calls
        assert (call.name, call.arguments) == ("bash", {"command": "ls -la"})
        assert first.stop_reason == "tool_calls"
        assert (first.usage.input_tokens, first.usage.output_tokens, first.usage.cache_read_tokens) == (20, 9, 64)
        assert first.usage.cost_usd == pytest.approx(expected_cost(MODEL, 20, 9, 64))

        history += [Message("assistant", text=first.text, tool_calls=first.tool_calls),
                    Message("tool", text="a.txt\nb.txt", tool_call_id=call.id, name="bash")]
        second = llm.complete(history, system="You are terse.", tools=[BASH])
        assert second.text == "There are two files." and second.tool_calls == []

        bodies = [r["body"] for r in fake.requests]
    assert llm.total_usage.input_tokens == 50 and llm.total_usage.output_tokens == 14
    assert llm.total_usage.cache_read_tokens == 64
    assert llm.total_usage.cost_usd == pytest.approx(expected_cost(MODEL, 50, 14, 64))

    first_body, second_body = bodies
    assert first_body["model"] == MODEL
    if api == "chat":
        assert first_body["messages"][0] == {"role": "system", "content": "You are terse."}
        assert first_body["tools"][0]["function"]["name"] == "bash"
        assert first_body["max_tokens"] == 123
        tool_msg = second_body["messages"][-1]
        assert tool_msg == {"role": "tool", "tool_call_id": call.id, "content": "a.txt\nb.txt"}
        assert second_body["messages"][-2]["tool_calls"][0]["id"] == call.id
    else:
        assert first_body["instructions"] == "You are terse."
        assert first_body["tools"][0]["name"] == "bash" and first_body["tools"][0]["type"] == "function"
        assert first_body["max_output_tokens"] == 123 and first_body["store"] is False
        assert second_body["input"][-1] == {"type": "function_call_output", "call_id": call.id,
                                            "output": "a.txt\nb.txt"}
        assert second_body["input"][-2]["type"] == "function_call"
        assert second_body["input"][-2]["call_id"] == call.id


FAULTS = {
    "429-retry-after": Fault("status", status=429, retry_after=0.4,
                             body={"error": {"message": "Rate limit reached", "type": "requests", "code": None}}),
    "529-overloaded": Fault("status", status=529),
    "503-unavailable": Fault("status", status=503),
    "hung-response": Fault("hang", seconds=3.0),
    "dropped-connection": Fault("drop"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_transient_faults_are_retried_and_logged(name, caplog):
    with FakeLLM([Turn(text="recovered")], faults=[FAULTS[name]]) as fake:
        llm = make_llm(fake, timeout=0.6)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="autoembed.llm"):
            response = llm.complete([Message("user", text="hi")])
        elapsed = time.monotonic() - start
        assert response.text == "recovered"
        assert len(fake.requests) == 2, "one failed attempt, one retry"
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 1, caplog.text
    if name == "429-retry-after":
        assert "retrying in 0.4s" in retries[0].getMessage()
        assert elapsed >= 0.4, "the wait must honour retry-after"
    if name == "hung-response":
        assert "timed out" in retries[0].getMessage()
        assert elapsed < 3.0, "the client timeout, not the server, must end a hung call"


def test_responses_api_is_retried_too(caplog):
    with FakeLLM([Turn(text="ok")], faults=[Fault("status", status=502)]) as fake:
        with caplog.at_level(logging.WARNING, logger="autoembed.llm"):
            assert make_llm(fake, "responses").complete([Message("user", text="hi")]).text == "ok"
        assert len(fake.requests) == 2
    assert "HTTP 502" in caplog.text


def test_401_fails_at_once_naming_the_key():
    body = {"error": {"message": "Incorrect API key provided: sk-test.", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    with FakeLLM([Turn(text="never")], faults=[Fault("status", status=401, body=body)]) as fake:
        with pytest.raises(LLMError, match="OPENAI_API_KEY") as info:
            make_llm(fake).complete([Message("user", text="hi")])
        assert len(fake.requests) == 1, "a bad key must not be retried"
    assert "401" in str(info.value) and "Incorrect API key" in str(info.value)


def test_context_too_long_fails_at_once():
    body = {"error": {"message": "This model's maximum context length is 128000 tokens.",
                      "type": "invalid_request_error", "code": "context_length_exceeded"}}
    with FakeLLM([Turn(text="never")], faults=[Fault("status", status=400, body=body)]) as fake:
        with pytest.raises(LLMError, match="context too long"):
            make_llm(fake).complete([Message("user", text="hi")])
        assert len(fake.requests) == 1


def test_insufficient_quota_429_is_not_retried():
    body = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                      "code": "insufficient_quota"}}
    with FakeLLM([Turn(text="never")], faults=[Fault("status", status=429, body=body)]) as fake:
        with pytest.raises(LLMError, match="quota"):
            make_llm(fake).complete([Message("user", text="hi")])
        assert len(fake.requests) == 1


def test_local_compatible_endpoint_by_base_url_only(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeLLM([Turn(text="hello from a local model", tool_calls=[("bash", {"command": "pwd"})])]) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
        llm = get_llm("openai:llama3.1:8b-instruct")  # provider prefix split once: the model keeps its colon
        response = llm.complete([Message("user", text="hi")], tools=[BASH])
        request = fake.requests[0]
    assert llm.model == "llama3.1:8b-instruct" and request["body"]["model"] == "llama3.1:8b-instruct"
    assert response.text == "hello from a local model" and response.tool_calls[0].arguments == {"command": "pwd"}
    assert response.usage.input_tokens == 11 and response.usage.cost_usd is None, "unknown model: cost unknown"
    assert llm.total_usage.cost_usd is None
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == f"Bearer {LOCAL_KEY_PLACEHOLDER}"
    assert "max_tokens" in request["body"] and "max_completion_tokens" not in request["body"]


def test_missing_key_for_the_official_api_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY is not set"):
        OpenAILLM("gpt-5")
    with pytest.raises(LLMError, match="unknown OpenAI api"):
        OpenAILLM("gpt-5", api="completions", api_key="sk-x")


def test_official_endpoint_uses_max_completion_tokens():
    llm = OpenAILLM("gpt-5", api_key="sk-x")  # no network: only builds the request
    params = llm.request([Message("user", text="hi")], system=None, tools=None, max_tokens=50)
    assert params["max_completion_tokens"] == 50 and "max_tokens" not in params


# -- the fake server's streaming wire formats, read by the real SDK (codex relies on the Responses one) --
def test_fake_chat_sse_stream_parses_in_the_sdk():
    turn = Turn(text="streamed text", tool_calls=[("bash", {"command": "echo hi"})], cache_read_tokens=3)
    with FakeLLM([turn]) as fake:
        client = openai.OpenAI(api_key="sk-test", base_url=fake.url + "/v1", max_retries=0)
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                stream=True, stream_options={"include_usage": True})
        text, args, names, usage, finish = "", "", "", None, None
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    names += call.function.name or ""
                    args += call.function.arguments or ""
    assert (text, names, args, finish) == ("streamed text", "bash", '{"command": "echo hi"}', "tool_calls")
    assert usage.prompt_tokens == 14 and usage.prompt_tokens_details.cached_tokens == 3


def test_fake_responses_sse_stream_parses_in_the_sdk():
    with FakeLLM([Turn(text="thinking aloud", tool_calls=[("exec_command", {"cmd": "ls"})])]) as fake:
        client = openai.OpenAI(api_key="sk-test", base_url=fake.url + "/v1", max_retries=0)
        events = list(client.responses.create(model=MODEL, input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "thinking aloud"
    final = events[-1].response
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "exec_command" and call.arguments == '{"cmd": "ls"}'
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 7
