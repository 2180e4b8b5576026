"""GoogleLLM through the real google-genai SDK against the fake Gemini server on 127.0.0.1."""

from __future__ import annotations

import logging
import time

import pytest

import autoembed.llm.retry as retry
from autoembed.llm.base import LLMError, Message, ToolSpec
from autoembed.llm.google_llm import GoogleLLM, to_contents
from autoembed.llm.registry import get_llm
from autoembed.llm.retry import TransientError
from tests.fakellm.gemini import THOUGHT_SIGNATURE
from tests.fakellm.server import Fault, FakeLLM, Turn

MODEL = "gemini-2.5-flash"
BASH = ToolSpec("bash", "Run a shell command", {"type": "object", "properties": {"command": {"type": "string"}},
                                                "required": ["command"]})


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch):
    monkeypatch.setattr(retry, "BASE_WAIT_S", 0.01)


def make_llm(fake: FakeLLM, **kwargs) -> GoogleLLM:
    return GoogleLLM(MODEL, api_key="test-key", base_url=fake.url, **kwargs)


def flash_cost(uncached: int, output: int, cached: int) -> float:
    # gemini-2.5-flash per million tokens as genai-prices lists it: 0.30 in, 2.50 out, 0.03 cached read
    return (uncached * 0.30 + output * 2.50 + cached * 0.03) / 1e6


def test_tool_call_round_trip_sums_usage_and_echoes_thought_signature():
    script = [Turn(text="Let me look.", tool_calls=[("bash", {"command": "ls -la"})], input_tokens=100,
                   output_tokens=20, cache_read_tokens=40),
              Turn(text="There is one file.", input_tokens=150, output_tokens=10)]
    with FakeLLM(script) as fake:
        llm = make_llm(fake)
        messages = [Message("user", text="What is in the folder?")]
        first = llm.complete(messages, system="You are terse.", tools=[BASH])
        assert first.text == "Let me look."
        assert [(c.name, c.arguments) for c in first.tool_calls] == [("bash", {"command": "ls -la"})]
        assert (first.usage.input_tokens, first.usage.output_tokens, first.usage.cache_read_tokens) == (100, 20, 40)
        assert first.usage.cost_usd == pytest.approx(flash_cost(100, 20, 40))

        call = first.tool_calls[0]
        messages += [Message("assistant", text=first.text, tool_calls=first.tool_calls,
                             provider_state=first.provider_state),
                     Message("tool", text="total 0\nnotes.txt", tool_call_id=call.id, name="bash")]
        second = llm.complete(messages, system="You are terse.", tools=[BASH])
        assert second.text == "There is one file." and second.tool_calls == []

        request = fake.requests[0]
        assert request["headers"].get("x-goog-api-key") == "test-key"
        assert request["path"].endswith(f"/models/{MODEL}:generateContent")
        body = request["body"]
        assert body["systemInstruction"]["parts"][0]["text"] == "You are terse."
        declaration = body["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == "bash"
        assert (declaration.get("parametersJsonSchema") or declaration.get("parameters_json_schema")) == BASH.parameters

        history = fake.requests[1]["body"]["contents"]
        assert [c["role"] for c in history] == ["user", "model", "user"]
        model_parts = history[1]["parts"]
        assert model_parts[1]["functionCall"] == {"name": "bash", "args": {"command": "ls -la"}}
        assert model_parts[1]["thoughtSignature"] == THOUGHT_SIGNATURE  # echoed verbatim
        assert history[2]["parts"][0]["functionResponse"]["name"] == "bash"
        assert history[2]["parts"][0]["functionResponse"]["response"] == {"output": "total 0\nnotes.txt"}

    total = llm.total_usage
    assert (total.input_tokens, total.output_tokens, total.cache_read_tokens) == (250, 30, 40)
    assert total.cost_usd == pytest.approx(flash_cost(100, 20, 40) + flash_cost(150, 10, 0))


def test_parallel_tool_results_share_one_user_turn():
    from autoembed.llm.base import ToolCall

    calls = [ToolCall("gcall_a", "bash", {"command": "ls"}), ToolCall("call-7", "bash", {"command": "pwd"})]
    contents = to_contents([Message("user", text="go"), Message("assistant", tool_calls=calls),
                            Message("tool", text="a", tool_call_id="gcall_a", name="bash"),
                            Message("tool", text="/w", tool_call_id="call-7", name="bash")])
    assert [c.role for c in contents] == ["user", "model", "user"]
    responses = [p.function_response for p in contents[2].parts]
    assert [(r.name, r.id, r.response) for r in responses] == [("bash", None, {"output": "a"}),
                                                              ("bash", "call-7", {"output": "/w"})]
    assert contents[1].parts[0].function_call.id is None  # an id we invented is never sent back


FAULTS = {
    "429": Fault("status", 429),
    "503": Fault("status", 503),
    "500": Fault("status", 500),
    "529": Fault("status", 529),
    "hang": Fault("hang", seconds=3.0),
    "drop": Fault("drop"),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_transient_faults_are_retried_and_logged(name, caplog):
    with FakeLLM([Turn(text="recovered")], faults=[FAULTS[name]]) as fake:
        llm = make_llm(fake, timeout=0.5)
        with caplog.at_level(logging.WARNING, logger="autoembed.llm"):
            response = llm.complete([Message("user", text="hi")])
    assert response.text == "recovered"
    assert len(fake.requests) == 2 and fake.fault_log == [name]
    retried = [r.getMessage() for r in caplog.records if r.name == "autoembed.llm"]
    assert len(retried) == 1 and "attempt 1" in retried[0], retried
    if name == "hang":
        assert "timed out" in retried[0]


def test_retry_after_header_is_honoured(caplog):
    with FakeLLM([Turn(text="ok")], faults=[Fault("status", 429, retry_after=0.6)]) as fake:
        llm = make_llm(fake)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="autoembed.llm"):
            assert llm.complete([Message("user", text="hi")]).text == "ok"
        elapsed = time.monotonic() - start
    assert elapsed >= 0.6  # backoff alone would have waited about 0.01 s
    assert "retrying in 0.6s" in caplog.text


def test_retry_delay_in_a_resource_exhausted_body_is_honoured():
    body = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}]}}
    with FakeLLM([Turn(text="ok")], faults=[Fault("status", 429, body=body)]) as fake:
        start = time.monotonic()
        assert make_llm(fake).complete([Message("user", text="hi")]).text == "ok"
        assert time.monotonic() - start >= 0.5


def test_401_fails_at_once_naming_the_key():
    with FakeLLM([Turn(text="never")], faults=[Fault("status", 401)]) as fake:
        with pytest.raises(LLMError, match="GEMINI_API_KEY") as info:
            make_llm(fake).complete([Message("user", text="hi")])
        assert len(fake.requests) == 1  # no retry
    assert not isinstance(info.value, TransientError)


def test_invalid_key_400_names_the_key_and_bad_request_fails_at_once():
    invalid_key = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                             "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}
    with FakeLLM(faults=[Fault("status", 400, body=invalid_key), Fault("status", 400)]) as fake:
        llm = make_llm(fake)
        with pytest.raises(LLMError, match="GEMINI_API_KEY"):
            llm.complete([Message("user", text="hi")])
        with pytest.raises(LLMError, match="400") as info:
            llm.complete([Message("user", text="hi")])
        assert "API_KEY" not in str(info.value)
        assert len(fake.requests) == 2


def test_gives_up_after_max_attempts():
    with FakeLLM(faults=[Fault("status", 503)] * 3) as fake:
        with pytest.raises(TransientError, match="503"):
            make_llm(fake, max_attempts=3).complete([Message("user", text="hi")])
        assert len(fake.requests) == 3


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(LLMError, match="GEMINI_API_KEY"):
        GoogleLLM(MODEL)


def test_registry_and_environment(monkeypatch):
    with FakeLLM([Turn(text="via env")]) as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "env-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        llm = get_llm(f"google:{MODEL}")
        assert isinstance(llm, GoogleLLM)
        assert llm.complete([Message("user", text="hi")]).text == "via env"
        assert fake.requests[0]["headers"].get("x-goog-api-key") == "env-key"
