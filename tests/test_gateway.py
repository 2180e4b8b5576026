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
    """Tokens are reserved like dollars: a call goes out only if the tokens used, those held by calls in flight and
    its own most (prompt estimated from the body, plus its output cap) fit under the cap."""
    fake.script = lambda body: Turn(text="x", input_tokens=30, output_tokens=10)
    with start(tmp_path, fake, max_tokens=100) as gateway:
        client = openai.OpenAI(api_key=gateway.token, base_url=f"{gateway.tcp_url}/openai", max_retries=0)
        ask = dict(model="gpt-5", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=10)
        for _ in range(2):  # 40 tokens each, about 41 reserved: 80 used, and the third cannot fit under 100
            client.chat.completions.create(**ask)
        with pytest.raises(openai.PermissionDeniedError, match="token budget cannot cover this call"):
            client.chat.completions.create(**ask)
        assert gateway.summary()["usage"]["input_tokens"] + gateway.summary()["usage"]["output_tokens"] == 80
    summary = gateway.summary()
    assert summary["stopped_by"] == "max_tokens" and summary["refused"] == {"max_tokens": 1}
    assert summary["calls"] == 2 and len(fake.requests) == 2
    assert log_rows(gateway)[-1]["refused"] == "max_tokens"


def test_concurrent_calls_cannot_pass_the_token_cap_together(tmp_path, fake):
    import concurrent.futures

    def slow(body):
        time.sleep(0.3)
        return Turn(text="x", input_tokens=30, output_tokens=10)

    fake.script = slow
    with start(tmp_path, fake, max_tokens=100) as gateway:
        client = openai.OpenAI(api_key=gateway.token, base_url=f"{gateway.tcp_url}/openai", max_retries=0)

        def call(_):
            try:
                client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                               max_completion_tokens=10)
                return "ok"
            except openai.PermissionDeniedError:
                return "refused"

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(call, range(20)))
    usage = gateway.summary()["usage"]
    assert outcomes.count("ok") == 2 and len(fake.requests) == 2, outcomes  # 20 x 40 tokens before reservations
    assert usage["input_tokens"] + usage["output_tokens"] <= 100


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
    from autoembed.trial import trajectory
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


# -- least privilege: the allowlist, the size limit, the logged bodies --------------------------------------------
def raw_request(gateway: Gateway, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, parsed JSON) of one request sent as written (http.client does not normalize the path)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gateway.tcp_port, timeout=30)
    conn.request(method, path, body=body or None, headers={"x-api-key": gateway.token,
                                                            "authorization": f"Bearer {gateway.token}",
                                                            "content-type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None


FORBIDDEN = [("POST", "/anthropic/v1/messages/batches"), ("DELETE", "/anthropic/v1/files/file_011"),
             ("GET", "/anthropic/v1/organizations/api_keys"), ("GET", "/anthropic/v1/files"),
             ("POST", "/anthropic/v1/messages/../files"), ("POST", "/anthropic/v1/messages/%2e%2e/batches"),
             ("PUT", "/anthropic/v1/messages"), ("GET", "/anthropic/v1/messages"),
             ("POST", "/openai/batches"), ("POST", "/openai/files"), ("DELETE", "/openai/models/ft:gpt-5:me"),
             ("POST", "/openai/fine_tuning/jobs"), ("GET", "/openai/organization/admin_api_keys"),
             ("POST", "/openai/chat/completions/x"),
             ("POST", "/gemini/v1beta/files"), ("POST", "/gemini/v1beta/cachedContents"),
             ("POST", "/gemini/v1beta/models/gemini-2.5-flash:batchGenerateContent"),
             ("DELETE", "/gemini/v1beta/tunedModels/mine"), ("POST", "/gemini/v1beta/models/../files:x")]


@pytest.mark.parametrize("method, path", FORBIDDEN)
def test_only_generation_counting_and_listing_go_out(tmp_path, fake, method, path):
    with start(tmp_path, fake) as gateway:
        status, body = raw_request(gateway, method, path, b'{"requests": []}')
    assert status == 403, (status, body)
    assert "is not forwarded" in json.dumps(body), body
    assert fake.requests == [], "a forbidden request left the gateway"
    [row] = log_rows(gateway)
    assert row["refused"] == "forbidden_path" and row["method"] == method and row["status"] == 403
    assert gateway.summary()["refused"] == {"forbidden_path": 1}


def test_token_counting_and_model_listing_still_go_out(tmp_path, fake):
    with start(tmp_path, fake) as gateway:
        base, token = gateway.tcp_url, gateway.token
        client = anthropic.Anthropic(api_key=token, base_url=f"{base}/anthropic", max_retries=0)
        assert client.messages.count_tokens(model="claude-sonnet-4-6",
                                            messages=[{"role": "user", "content": "hi"}]).input_tokens > 0
        assert [m.id for m in openai.OpenAI(api_key=token, base_url=f"{base}/openai", max_retries=0).models.list()]
        google = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=f"{base}/gemini"))
        assert google.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens > 0
        assert raw_request(gateway, "GET", "/gemini/v1beta/models")[0] == 200
    assert [r["status"] for r in log_rows(gateway)] == [200] * 4 and len(fake.requests) == 4


def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path, fake):
    import socket

    from autoembed.gateway.server import MAX_REQUEST_BYTES

    with start(tmp_path, fake) as gateway:
        # a declared 100 MB body: refused on its length, with almost none of it sent
        status, body = raw_request(gateway, "POST", "/anthropic/v1/messages", b"{}",
                                   {"content-length": str(100 * 1024 * 1024)})
        assert status == 413 and "over the gateway's limit" in json.dumps(body), body
        # 100 MB sent chunked (no length): the gateway answers once it has read past its limit
        sock = socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=30)
        sock.sendall(f"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {gateway.token}\r\n"
                     f"Transfer-Encoding: chunked\r\ncontent-type: application/json\r\n\r\n".encode())
        piece, sent = b"a" * (1024 * 1024), 0
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        try:
            while sent < 100 * len(piece):
                sock.sendall(chunk)
                sent += len(piece)
        except OSError:  # the gateway refused and closed while we were still sending
            pass
        reply = sock.recv(65536).decode("latin-1")
        sock.close()
        assert reply.startswith("HTTP/1.1 413"), reply[:200]
        assert sent < 60 * len(piece), f"the gateway read {sent} bytes of a body it had to refuse"
    assert fake.requests == []
    assert [r["refused"] for r in log_rows(gateway)] == ["request_too_large"] * 2
    assert gateway.bodies_path.stat().st_size < 10_000
    assert MAX_REQUEST_BYTES <= 16 * 1024 * 1024


def test_logged_bodies_are_capped(tmp_path, fake):
    from autoembed.gateway.server import MAX_LOGGED_BODY_CHARS

    fake.script = lambda body: Turn(text="ok")
    big = [{"role": "user", "content": "x" * 1_000_000}, {"role": "assistant", "content": "y" * 1_000_000},
           {"role": "user", "content": "the last turn"}]
    with start(tmp_path, fake) as gateway:
        client = anthropic.Anthropic(api_key=gateway.token, base_url=f"{gateway.tcp_url}/anthropic", max_retries=0)
        for _ in range(3):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=big)
    lines = gateway.bodies_path.read_text().splitlines()
    assert len(lines) == 3 and all(len(line) < 1.2 * MAX_LOGGED_BODY_CHARS for line in lines)
    request = json.loads(lines[0])["request"]
    assert "_cut" in request and request["messages"] == [{"role": "user", "content": "the last turn"}]
    assert len(fake.requests[0]["body"]["messages"][0]["content"]) == 1_000_000  # the call itself went whole


# -- caps that bind: prices, reservations, cut streams ----------------------------------------------------------------
def test_prices_match_exact_ids_and_dated_variants_only():
    from autoembed.llm.pricing import PriceBook, parse_prices, table_price
    from autoembed.trace import Usage

    million_out = Usage(output_tokens=1_000_000)
    book = PriceBook()
    assert book.cost("gpt-5-pro", million_out, "openai") > 10 * book.cost("gpt-5", million_out, "openai")
    assert book.cost("gpt-5-2025-08-07", million_out) == book.cost("gpt-5", million_out)
    assert book.cost("claude-3-opus-20240229", million_out, "anthropic") == pytest.approx(75.0)
    assert table_price("claude-sonnet-4-5-20250929") == table_price("claude-sonnet-4-5")
    for unknown in ("gpt-5-foo", "claude-sonnet-4-6-foo", "gemini-2.5-pro-x", "claude-audit-chaos", ""):
        assert book.cost(unknown, million_out) is None and not book.known(unknown), unknown
    mine = PriceBook(parse_prices("my-local=0,0; claude-sonnet-4-6=1,2,0.1,1.5"))
    assert mine.cost("my-local", million_out) == 0.0 and mine.cost("claude-sonnet-4-6", million_out) == 2.0
    for bad in ("m=1", "m=a,b", "=1,2", "m=-1,2", "m=1,2,3,4,5", "m=nan,1"):
        with pytest.raises(ValueError, match="AUTOEMBED_PRICES"):
            parse_prices(bad)


def test_a_model_without_a_price_is_refused_unless_the_user_gives_one(tmp_path, fake):
    from autoembed.llm.pricing import PriceBook, parse_prices

    fake.script = lambda body: Turn(text="x", input_tokens=10, output_tokens=5_000_000)
    with start(tmp_path, fake, max_usd=50) as gateway:
        client = anthropic.Anthropic(api_key=gateway.token, base_url=f"{gateway.tcp_url}/anthropic", max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError, match="no known price.*AUTOEMBED_PRICES"):
            client.messages.create(model="claude-3-opus-x", max_tokens=4096, messages=[{"role": "user", "content": "x"}])
    assert fake.requests == [] and log_rows(gateway)[0]["refused"] == "unpriced_model"
    given = Gateway(tmp_path / "given", upstreams(fake), Limits(max_usd=50), tcp=True,
                    prices=PriceBook(parse_prices("claude-3-opus-x=15,75"))).start()
    with given:
        client = anthropic.Anthropic(api_key=given.token, base_url=f"{given.tcp_url}/anthropic", max_retries=0)
        client.messages.create(model="claude-3-opus-x", max_tokens=4096, messages=[{"role": "user", "content": "x"}])
    assert given.summary()["usage"]["cost_usd"] == pytest.approx(10 * 15 / 1e6 + 5_000_000 * 75 / 1e6)
    assert given.summary()["over_cap"] == ["max_usd"]  # the fake declared more than max_tokens allows: flagged


def test_concurrent_calls_cannot_pass_the_dollar_cap_together(tmp_path, fake):
    """40 calls of $1.50 each (20,000 output tokens of opus 4.1 at $75/M) at once under a $2 cap: one goes out."""
    import concurrent.futures

    def slow(body):
        time.sleep(0.3)
        return Turn(text="x", input_tokens=10, output_tokens=20_000)

    fake.script = slow
    with start(tmp_path, fake, max_usd=2.0) as gateway:
        client = anthropic.Anthropic(api_key=gateway.token, base_url=f"{gateway.tcp_url}/anthropic", max_retries=0)

        def call(_):
            try:
                client.messages.create(model="claude-opus-4-1-20250805", max_tokens=20_000,
                                       messages=[{"role": "user", "content": "x"}])
                return "ok"
            except anthropic.PermissionDeniedError as exc:
                assert "dollar budget" in str(exc)
                return "refused"

        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            outcomes = list(pool.map(call, range(40)))
    summary = gateway.summary()
    assert outcomes.count("ok") == 1 and len(fake.requests) == 1, outcomes
    assert summary["usage"]["cost_usd"] <= 2.0 and summary["over_cap"] == [] and summary["reserved_usd"] == 0
    assert summary["refused"] == {"max_usd": 39}


def test_a_request_without_an_output_cap_gets_one(tmp_path, fake):
    from autoembed.gateway.reserve import DEFAULT_MAX_OUTPUT_TOKENS

    with start(tmp_path, fake, max_usd=5) as gateway:
        oai = openai.OpenAI(api_key=gateway.token, base_url=f"{gateway.tcp_url}/openai", max_retries=0)
        oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
        oai.responses.create(model="gpt-5", input="hi")
        google = genai.Client(api_key=gateway.token, http_options=types.HttpOptions(base_url=f"{gateway.tcp_url}/gemini"))
        google.models.generate_content(model="gemini-2.5-flash", contents="hi")
        status, body = raw_request(gateway, "POST", "/anthropic/v1/messages", json.dumps(
            {"model": "claude-sonnet-4-6", "max_tokens": "lots", "messages": []}).encode())
        assert status == 400 and "positive whole number" in json.dumps(body)
    sent = [r["body"] for r in fake.requests]
    assert sent[0]["max_completion_tokens"] == sent[1]["max_output_tokens"] == DEFAULT_MAX_OUTPUT_TOKENS
    assert sent[2]["generationConfig"]["maxOutputTokens"] == DEFAULT_MAX_OUTPUT_TOKENS and len(sent) == 3


def test_a_stream_cut_by_the_client_pays_its_reservation_or_declared_usage(tmp_path, fake):
    """The client reads the first bytes of a long stream and hangs up: the gateway reads the rest for the usage the
    stream declares at its end (1,000,000 output tokens, charged), and a stream that declares little pays its
    reservation (its max_tokens at the output price)."""
    import http.client

    declared = iter([1_000_000, 1])
    fake.script = lambda body: Turn(text="word " * 1_000_000, input_tokens=10, output_tokens=next(declared))
    with start(tmp_path, fake) as gateway:
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", gateway.tcp_port, timeout=30)
            conn.request("POST", "/anthropic/v1/messages", body=json.dumps(
                {"model": "claude-sonnet-4-6", "max_tokens": 8000, "stream": True,
                 "messages": [{"role": "user", "content": "x"}]}), headers={"x-api-key": gateway.token})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read(2000)
            conn.sock.close()  # gone after the first bytes
            conn.close()
            deadline = time.time() + 20
            while len(log_rows(gateway) if gateway.log_path.exists() else []) < _ + 1 and time.time() < deadline:
                time.sleep(0.1)
    first, second = log_rows(gateway)
    assert first["usage"]["cost_usd"] == pytest.approx((10 * 3.0 + 1_000_000 * 15.0) / 1e6)  # sonnet 4.6: $3 / $15
    assert first["client_gone"] and first["usage"]["output_tokens"] == 1_000_000
    assert second["client_gone"] and second["usage"]["cost_usd"] == pytest.approx(second["reserved_usd"])
    assert second["reserved_usd"] >= 8000 * 15 / 1e6


def test_a_free_local_model_the_user_priced_gets_no_output_cap(tmp_path, fake):
    from autoembed.llm.pricing import PriceBook, parse_prices

    gateway = Gateway(tmp_path / "run", {"openai": Upstream(fake.url + "/v1")}, Limits(max_usd=1.0), tcp=True,
                      prices=PriceBook(parse_prices("qwen2.5-coder=0,0"))).start()
    with gateway:
        oai = openai.OpenAI(api_key=gateway.token, base_url=f"{gateway.tcp_url}/openai", max_retries=0)
        oai.chat.completions.create(model="qwen2.5-coder", messages=[{"role": "user", "content": "hi"}])
    body = fake.requests[0]["body"]
    assert "max_completion_tokens" not in body and "max_tokens" not in body
    assert gateway.summary()["usage"]["cost_usd"] == 0.0


@pytest.mark.parametrize("model", ["gpt-5", "gpt-5-pro", "claude-sonnet-4-6", "claude-sonnet-4-5-20250929",
                                   "gemini-2.5-pro", "gemini-2.5-flash", "claude-opus-4-1-20250805"])
def test_the_price_book_agrees_with_the_table_below_and_above_long_context_tiers(model):
    from genai_prices import Usage as TableUsage, calc_price

    from autoembed.llm.pricing import PriceBook, _table_model
    from autoembed.trace import Usage

    for usage in (Usage(input_tokens=1000, output_tokens=300, cache_read_tokens=500, cache_write_tokens=200),
                  Usage(input_tokens=300_000, output_tokens=10)):
        table = calc_price(TableUsage(input_tokens=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
                                      cache_read_tokens=usage.cache_read_tokens, output_tokens=usage.output_tokens,
                                      cache_write_tokens=usage.cache_write_tokens),
                           model_ref=model, provider_id=_table_model(model, None))
        assert PriceBook().cost(model, usage) == pytest.approx(float(table.total_price), abs=1e-12)


def test_prices_given_in_the_environment_are_read_and_bad_ones_named(tmp_path, fake, monkeypatch):
    from autoembed.trace import Usage

    monkeypatch.setenv("AUTOEMBED_PRICES", "claude-3-opus-x=15,75")
    gateway = Gateway(tmp_path / "a", upstreams(fake))
    assert gateway.prices.cost("claude-3-opus-x-20240229", Usage(output_tokens=1_000_000)) == 75.0
    monkeypatch.setenv("AUTOEMBED_PRICES", "claude-3-opus-x=lots")
    with pytest.raises(ValueError, match="AUTOEMBED_PRICES: bad entry 'claude-3-opus-x=lots'"):
        Gateway(tmp_path / "b", upstreams(fake))


def test_requests_that_would_spend_past_their_reservation_are_refused_or_reserved_in_full(tmp_path, fake):
    """n replies reserve n times the output cap; a Responses call in the background (billed after the trial) and a
    method override never go out."""
    fake.script = lambda body: Turn(text="x", input_tokens=10, output_tokens=5)
    fake.faults = [Fault("status", 429)]  # refused by the provider: costs nothing, and its reservation is released
    with start(tmp_path, fake, max_usd=1.0) as gateway:
        chat = {"model": "gpt-5", "max_completion_tokens": 20_000, "messages": [{"role": "user", "content": "hi"}]}
        assert raw_request(gateway, "POST", "/openai/chat/completions", json.dumps(chat).encode())[0] == 429
        assert gateway.summary()["usage"]["cost_usd"] == 0.0 and gateway.summary()["reserved_usd"] == 0.0
        assert raw_request(gateway, "POST", "/openai/chat/completions", json.dumps(chat).encode())[0] == 200
        status, body = raw_request(gateway, "POST", "/openai/chat/completions", json.dumps({**chat, "n": 8}).encode())
        assert status == 403 and "dollar budget cannot cover" in json.dumps(body)  # 8 x 20,000 x $10/M = $1.60
        status, _ = raw_request(gateway, "POST", "/openai/responses", json.dumps(
            {"model": "gpt-5", "input": "hi", "background": True, "max_output_tokens": 10}).encode())
        assert status == 403
        status, _ = raw_request(gateway, "POST", "/anthropic/v1/messages", json.dumps(
            {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []}).encode(),
            {"x-http-method-override": "DELETE"})
        assert status == 200
    assert len(fake.requests) == 3
    assert all("x-http-method-override" not in {k.lower() for k in r["headers"]} for r in fake.requests)
    assert [r.get("refused") for r in log_rows(gateway)] == [None, None, "max_usd", "runs_after_reply", None]


PROVIDER_SIDE_TOOLS = [
    ("/anthropic/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [],
                                "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "web_fetch_20250910"),
    ("/anthropic/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [],
                                "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
    ("/anthropic/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [],
                                "mcp_servers": [{"type": "url", "url": "https://example.invalid/mcp"}]}, "mcp_servers"),
    ("/openai/responses", {"model": "gpt-5", "input": "hi", "max_output_tokens": 10,
                           "tools": [{"type": "web_search_preview"}]}, "web_search_preview"),
    ("/openai/responses", {"model": "gpt-5", "input": "hi", "max_output_tokens": 10,
                           "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "code_interpreter"),
    ("/openai/chat/completions", {"model": "gpt-5", "max_completion_tokens": 5, "messages": [],
                                  "web_search_options": {}}, "web_search_options"),
    ("/gemini/v1beta/models/gemini-2.5-flash:generateContent",
     {"contents": [], "generationConfig": {"maxOutputTokens": 5}, "tools": [{"googleSearch": {}}]}, "googleSearch"),
    ("/gemini/v1beta/models/gemini-2.5-flash:generateContent",
     {"contents": [], "generationConfig": {"maxOutputTokens": 5}, "tools": [{"urlContext": {}}]}, "urlContext"),
]


def test_tools_the_provider_would_run_are_refused_and_own_tools_go_out(tmp_path, fake):
    """A provider's own web search and fetch, code execution and MCP servers reach the network outside the sandbox
    and bill per use beyond tokens: refused with a 403 that names the tool, logged, never forwarded. Tools the agent
    declares and runs itself still go out."""
    fake.script = lambda body: Turn(text="x", input_tokens=10, output_tokens=5)
    with start(tmp_path, fake, max_usd=5.0) as gateway:
        for path, body, name in PROVIDER_SIDE_TOOLS:
            status, reply = raw_request(gateway, "POST", path, json.dumps(body).encode())
            assert status == 403 and name in json.dumps(reply), (path, reply)
        own = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
               "tools": [{"name": "bash", "input_schema": {"type": "object"}}, {"type": "bash_20250124", "name": "bash2"}]}
        assert raw_request(gateway, "POST", "/anthropic/v1/messages", json.dumps(own).encode())[0] == 200
    assert len(fake.requests) == 1
    assert [r.get("refused") for r in log_rows(gateway)] == ["provider_side_tool"] * len(PROVIDER_SIDE_TOOLS) + [None]


def test_bodies_held_at_once_are_bounded_across_connections(tmp_path, fake, monkeypatch):
    """Many connections each sending just under the size limit must not add up: past the gateway's budget of body
    bytes in flight a request gets a 429, and the budget comes back when the calls end."""
    import socket

    from autoembed.gateway import server

    monkeypatch.setattr(server, "MAX_BODY_BYTES_IN_FLIGHT", 1_000_000)
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "x" * 600_000}]}).encode()
    with start(tmp_path, fake) as gateway:
        def begin(sent: int) -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=30)
            sock.sendall(f"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {gateway.token}\r\n"
                         f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body[:sent])
            return sock

        first = begin(550_000)  # held, waiting for the rest
        time.sleep(1.0)
        second = begin(len(body))
        reply = second.recv(65536).decode("latin-1")
        assert reply.startswith("HTTP/1.1 429"), reply[:200]
        first.sendall(body[550_000:])
        assert first.recv(65536).decode("latin-1").startswith("HTTP/1.1 200")
        first.close()
        second.close()
        time.sleep(0.2)
        assert gateway._bytes_held == 0
    assert [r.get("refused") for r in log_rows(gateway)] == ["bodies_in_flight", None]


def test_a_trial_whose_spend_passed_its_cap_is_not_clean():
    from autoembed.trial import summary

    meta = {"exit_reason": "finished", "status": "scored",
            "gateway": {"over_cap": ["max_usd"], "usage": {"cost_usd": 16.5}, "limits": {"max_usd": 2.0}}}
    score = {"status": "ok"}
    assert summary.problems(meta, score) == ["spend passed its cap: $16.5000 of $2.0, by the gateway's count"]
    assert summary.exit_code(meta, score) == 1 and "result: NOT CLEAN" in summary.render("r", "d", meta, score)
    meta["gateway"]["over_cap"] = []
    assert summary.problems(meta, score) == [] and summary.exit_code(meta, score) == 0


def test_models_used_counts_every_model_that_answered(tmp_path, fake):
    """meta.json's "models": calls, tokens and dollars per model from gateway.jsonl; refused calls count nowhere,
    and a model without a price has usd None (never $0)."""
    from autoembed.gateway.usage import main_model, models_used

    fake.script = lambda body: Turn(text="x", input_tokens=30, output_tokens=10)
    with start(tmp_path, fake) as gateway:
        client = anthropic.Anthropic(api_key=gateway.token, base_url=f"{gateway.tcp_url}/anthropic", max_retries=0)
        for _ in range(2):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "x"}])
        oai = openai.OpenAI(api_key=gateway.token, base_url=f"{gateway.tcp_url}/openai", max_retries=0)
        oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=20)
        with pytest.raises(openai.PermissionDeniedError):
            oai.chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": "hi"}])
    models = models_used(gateway.log_path)
    assert set(models) == {"claude-sonnet-4-6", "gpt-5"} and main_model(models) == "claude-sonnet-4-6"
    claude = models["claude-sonnet-4-6"]
    assert (claude["calls"], claude["input_tokens"], claude["output_tokens"]) == (2, 60, 20)
    assert claude["usd"] > 0 and models["gpt-5"]["calls"] == 1
    assert round(sum(m["usd"] for m in models.values()), 8) == round(gateway.summary()["usage"]["cost_usd"], 8)

    with open(gateway.log_path, "a") as log:  # a call the table could not price (a reply naming another model)
        log.write(json.dumps({"model": "mystery", "status": 200, "usage": {"input_tokens": 1, "cost_usd": None}}) + "\n")
        log.write("{cut by a kill\n")
    assert models_used(gateway.log_path)["mystery"]["usd"] is None
    assert models_used(tmp_path / "absent.jsonl") == {} and main_model({}) is None
