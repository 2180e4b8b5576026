"""The LLM gateway on the host: the real SDKs (anthropic, openai chat + responses, google-genai), streaming and
not, through the gateway to the fake server; the key swap; the log's usage and cost against the fake's scripted
counts; and each limit (dollars, tokens, per-call timeout, deadline) with the reason it records."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from autoembed.gateway.server import Gateway, Limits, Upstream, upstreams_from_env
from autoembed.llm.base import LLMError, Message
from autoembed.llm.pricing import PRICES
from autoembed.llm.registry import get_llm
from tests.fakellm import Fault, FakeLLM, Turn

REAL = {"anthropic": "sk-ant-REAL-0001", "openai": "sk-REAL-0002", "gemini": "AIza-REAL-0003"}


def upstreams(fake: FakeLLM) -> dict[str, Upstream]:
    return {"anthropic": Upstream(fake.url, REAL["anthropic"]), "openai": Upstream(fake.url + "/v1", REAL["openai"]),
            "gemini": Upstream(fake.url, REAL["gemini"])}


@pytest.fixture
def fake():
    with FakeLLM() as server:
        yield server


def start(tmp_path, fake, **limits) -> Gateway:
    return Gateway(tmp_path / "run", upstreams(fake), Limits(**limits), tcp=True).start()


def log_rows(gateway: Gateway) -> list[dict]:
    return [json.loads(line) for line in gateway.log_path.read_text().splitlines()]


def keys_seen(fake: FakeLLM) -> list[str]:
    return [v for r in fake.requests for k, v in r["headers"].items()
            if k.lower() in ("x-api-key", "authorization", "x-goog-api-key")] + [r["path"] for r in fake.requests]


@pytest.mark.parametrize("model", ["anthropic:claude-sonnet-4-6", "openai:gpt-5", "openai-responses:gpt-5",
                                   "google:gemini-2.5-flash"])
def test_sdks_through_the_gateway_swap_the_key_and_log_usage(tmp_path, fake, model, monkeypatch):
    fake.script = [Turn(text="hello", input_tokens=1000, output_tokens=200, cache_read_tokens=300)]
    with start(tmp_path, fake) as gateway:
        for name, value in gateway.agent_env(gateway.tcp_url).items():
            monkeypatch.setenv(name, value)
        response = get_llm(model).complete([Message("user", text="hi")])
    assert response.text == "hello"
    seen = keys_seen(fake)
    assert any(REAL[p] in " ".join(seen) for p in REAL), seen
    assert not any(gateway.token in v for v in seen), "the token must not travel upstream"
    [row] = log_rows(gateway)
    assert row["status"] == 200 and row["latency_s"] > 0 and row["stream"] is False
    usage = row["usage"]
    # the fake reports cached tokens on top of input_tokens (Anthropic separately, the others inside the prompt)
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_tokens"]) == (1000, 200, 300)
    price = PRICES["claude-sonnet-4" if "claude" in model else "gemini-2.5-flash" if "gemini" in model else "gpt-5"]
    assert usage["cost_usd"] == pytest.approx((1000 * price[0] + 200 * price[1] + 300 * price[2]
                                               + usage["cache_write_tokens"] * price[3]) / 1e6)
    summary = gateway.summary()
    assert summary["calls"] == 1 and summary["usage"]["cost_usd"] == pytest.approx(usage["cost_usd"])
    assert summary["stopped_by"] is None
    bodies = [json.loads(line) for line in gateway.bodies_path.read_text().splitlines()]
    assert bodies[0]["request"] and bodies[0]["response"]


def test_streams_pass_through_untouched_and_their_usage_is_counted(tmp_path, fake):
    turn = dict(text="streamed reply", tool_calls=[("bash", {"command": "ls"})], input_tokens=50, output_tokens=9)
    fake.script = lambda body: Turn(**turn)
    with start(tmp_path, fake) as gateway:
        base, token = gateway.tcp_url, gateway.token
        client = anthropic.Anthropic(api_key=token, base_url=f"{base}/anthropic", max_retries=0)
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            message = stream.get_final_message()
        assert message.content[0].text == "streamed reply" and message.content[1].input == {"command": "ls"}

        oai = openai.OpenAI(api_key=token, base_url=f"{base}/openai", max_retries=0)
        chunks = list(oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed reply"
        events = list(oai.responses.create(model="gpt-5", input="hi", stream=True))
        assert events[-1].type == "response.completed"

        google = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=f"{base}/gemini"))
        parts = list(google.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
        assert "".join(p.text or "" for p in parts) == "streamed reply"
    rows = log_rows(gateway)
    assert [r["stream"] for r in rows] == [True] * 4 and all(r["status"] == 200 for r in rows)
    for row in rows:  # every stream's usage read from its events, not left at zero
        assert (row["usage"]["input_tokens"], row["usage"]["output_tokens"]) == (50, 9), row
    bodies = [json.loads(line) for line in gateway.bodies_path.read_text().splitlines()]
    from autoembed.gateway.wire import WIRES

    for body in bodies:  # each stream folded into the reply it carried
        reply = WIRES[body["provider"]].reply(body["response"])
        assert reply.text == "streamed reply" and reply.tool_calls[0]["function_name"] == "bash", body
        assert reply.tool_calls[0]["arguments"] == {"command": "ls"}


def test_a_wrong_or_missing_token_is_refused_in_the_api_shape(tmp_path, fake):
    with start(tmp_path, fake) as gateway:
        client = anthropic.Anthropic(api_key=REAL["anthropic"], base_url=f"{gateway.tcp_url}/anthropic", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError, match="gateway token"):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        ok = urllib.request.urlopen(urllib.request.Request(
            f"{gateway.tcp_url}/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={gateway.token}",
            data=b'{"contents": [{"parts": [{"text": "hi"}]}]}', headers={"content-type": "application/json"}))
        assert ok.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{gateway.tcp_url}/elsewhere/x?key={gateway.token}")
        assert err.value.code == 404
    assert not fake.requests[:-1] or "key=" not in fake.requests[-1]["path"]  # the token stays at the gateway
    assert fake.requests[-1]["headers"].get("x-goog-api-key") == REAL["gemini"]
    assert len(fake.requests) == 1  # the refused calls never left


def test_token_cap_stops_the_trial_with_a_readable_error(tmp_path, fake):
    fake.script = lambda body: Turn(text="x", input_tokens=30, output_tokens=10)
    with start(tmp_path, fake, max_tokens=60) as gateway:
        client = openai.OpenAI(api_key=gateway.token, base_url=f"{gateway.tcp_url}/openai", max_retries=0)
        for _ in range(2):  # 40 tokens each: the second call crosses the cap, the third is refused
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError, match="token budget is spent"):
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    summary = gateway.summary()
    assert summary["stopped_by"] == "max_tokens" and summary["refused"] == {"max_tokens": 1}
    assert summary["calls"] == 2 and len(fake.requests) == 2
    assert log_rows(gateway)[-1]["refused"] == "max_tokens"


def test_dollar_cap(tmp_path, fake):
    fake.script = lambda body: Turn(text="x", input_tokens=100_000, output_tokens=0)  # $0.30 on sonnet-4
    with start(tmp_path, fake, max_usd=0.5) as gateway:
        llm = get_llm("anthropic:claude-sonnet-4-6", api_key=gateway.token, base_url=f"{gateway.tcp_url}/anthropic")
        llm.complete([Message("user", text="a")])
        llm.complete([Message("user", text="b")])
        with pytest.raises(LLMError, match="dollar budget is spent"):
            llm.complete([Message("user", text="c")])
    summary = gateway.summary()
    assert summary["stopped_by"] == "max_usd" and summary["usage"]["cost_usd"] == pytest.approx(0.6, abs=1e-3)


def test_a_gateway_that_stopped_or_lost_its_socket_says_so(tmp_path):
    gateway = Gateway(tmp_path, {"anthropic": Upstream("http://127.0.0.1:9")})
    assert gateway.lost() is None  # not started: nothing to lose
    gateway.start()
    assert gateway.lost() is None
    gateway.socket_path.unlink()  # what a temp-folder cleaner does to a long-lived socket
    assert "socket" in gateway.lost()
    gateway.stop()
    assert "server stopped at" in gateway.lost()


def test_per_call_timeout_and_deadline(tmp_path, fake):
    fake.faults = [Fault("hang", seconds=20.0)]
    with start(tmp_path, fake, call_timeout_s=1.0, deadline=time.time() + 6) as gateway:
        client = anthropic.Anthropic(api_key=gateway.token, base_url=f"{gateway.tcp_url}/anthropic", max_retries=0)
        t0 = time.monotonic()
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 504 and "call timeout" in str(err.value) and time.monotonic() - t0 < 5
        assert gateway.summary()["stopped_by"] is None  # a slow call does not end the trial
        time.sleep(max(0.0, gateway.limits.deadline - time.time()) + 0.1)
        with pytest.raises(anthropic.PermissionDeniedError, match="deadline has passed"):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    summary = gateway.summary()
    assert summary["call_timeouts"] == 1 and summary["stopped_by"] == "deadline"
    assert [r.get("limit") or r.get("refused") for r in log_rows(gateway)] == ["call_timeout", "deadline"]


def test_a_call_in_flight_is_cut_at_the_deadline(tmp_path, fake):
    fake.faults = [Fault("hang", seconds=20.0)]
    with start(tmp_path, fake, call_timeout_s=60, deadline=time.time() + 2) as gateway:
        client = openai.OpenAI(api_key=gateway.token, base_url=f"{gateway.tcp_url}/openai", max_retries=0)
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - t0 < 6
    assert log_rows(gateway)[0]["limit"] == "deadline"


def test_upstreams_come_from_the_host_environment():
    found = upstreams_from_env({"ANTHROPIC_API_KEY": "a", "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
                                "CLAUDE_CODE_OAUTH_TOKEN": "o", "GOOGLE_API_KEY": "g"})
    assert found["anthropic"].key == "a" and found["anthropic"].key_kind == "api_key"
    assert found["openai"].base_url == "http://127.0.0.1:11434/v1" and found["openai"].key is None  # a local server
    assert found["gemini"].key == "g" and found["gemini"].base_url.startswith("https://generativelanguage")
    assert upstreams_from_env({"CLAUDE_CODE_OAUTH_TOKEN": "o"})["anthropic"].key_kind == "oauth"
    assert upstreams_from_env({}) == {}


# -- the record: SSE read in pieces, and ATIF observations taken from what went back to the model ----------------
def test_sse_reader_survives_any_chunking():
    from autoembed.gateway.sse import SSEReader

    stream = (b'event: a\ndata: {"n": 1}\n\n: comment\n\ndata: [DONE]\n\r\n'
              b'data: {"n":\ndata: 2}\n\ndata: {"n": 3}')
    for size in (1, 2, 7, len(stream)):
        reader, seen = SSEReader(), []
        for i in range(0, len(stream), size):
            seen += list(reader.feed(stream[i:i + size]))
        seen += list(reader.close())
        assert seen == [("a", {"n": 1}), (None, {"n": 2}), (None, {"n": 3})], size


CALLS = {  # per wire: a reply with one tool call "c1", and the next request carrying its result back
    "anthropic": ({"content": [{"type": "tool_use", "id": "c1", "name": "bash", "input": {"command": "ls"}}]},
                  {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1",
                                                                "content": [{"type": "text", "text": "a.txt"}]}]}]}),
    "openai": ({"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]}}]},
               {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": "a.txt"}]}),
    "gemini": ({"candidates": [{"content": {"parts": [{"functionCall": {"id": "c1", "name": "bash",
                                                                       "args": {"command": "ls"}}}]}}]},
               {"contents": [{"role": "user", "parts": [{"functionResponse": {"id": "c1", "name": "bash",
                                                                               "response": {"output": "a.txt"}}}]}]}),
}


@pytest.mark.parametrize("provider", sorted(CALLS))
def test_trajectory_observations_are_what_went_back_to_the_model(provider):
    from autoembed import trajectory
    from autoembed.trace import Event

    reply, next_request = CALLS[provider]
    usage = {"input_tokens": 10, "output_tokens": 2, "cache_read_tokens": 5, "cache_write_tokens": 1, "cost_usd": 0.5}
    calls = [{"ts": 1.0, "provider": provider, "status": 200, "model": "m", "usage": usage, "request": {},
              "response": reply},
             {"ts": 2.0, "provider": provider, "status": 200, "model": "m", "usage": usage, "request": next_request,
              "response": {}},
             {"ts": 3.0, "provider": provider, "status": 403, "refused": "max_usd", "error": "spent"}]
    traced = [Event("tool_result", call_id="c1", text="from the trace, not used")]
    built = trajectory.build(session_id="s", agent={"name": "a", "version": "1"}, prompt="p", started=0.0,
                             calls=calls, events=traced)
    step = built["steps"][1]
    assert step["tool_calls"] == [{"tool_call_id": "c1", "function_name": "bash", "arguments": {"command": "ls"}}]
    assert "a.txt" in step["observation"]["results"][0]["content"]
    assert step["metrics"]["prompt_tokens"] == 16 and step["metrics"]["cached_tokens"] == 5
    assert built["final_metrics"]["total_cost_usd"] == 0.5 and built["final_metrics"]["extra"]["model_calls"] == 1
    assert built["final_metrics"]["extra"]["refused_calls"][0]["refused"] == "max_usd"


@pytest.mark.parametrize("upstream, limit_key", [("https://api.openai.com/v1", "max_completion_tokens"),
                                                 ("http://127.0.0.1:11434/v1", "max_tokens")])
def test_openai_requests_are_shaped_for_the_server_behind_the_gateway(upstream, limit_key, tmp_path, monkeypatch):
    """Behind the gateway the base URL is always local; OpenAI proper rejects max_tokens, local servers need it."""
    gateway = Gateway(tmp_path, {"openai": Upstream(upstream, "sk-x")})
    env = gateway.agent_env("http://127.0.0.1:8787")
    assert env["AUTOEMBED_OPENAI_UPSTREAM"] == upstream and env["OPENAI_API_KEY"] == gateway.token
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    llm = get_llm("openai:gpt-5")
    assert llm.base_url == "http://127.0.0.1:8787/openai"
    assert limit_key in llm.request([Message("user", text="hi")], system=None, tools=None, max_tokens=9)
