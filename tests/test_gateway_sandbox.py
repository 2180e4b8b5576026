"""The gateway as the one way out of both real engines (bwrap, docker): the provider SDKs inside reach the fake
server only through it, and nothing else answers: not the host's loopback ports (the fake's own port included),
not a server in another network namespace that this test creates, not name resolution. The host's keys are
nowhere inside. Nothing is sent off the machine."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import uuid

import pytest

from autoembed.gateway.server import Limits
from tests import sandbox_attacks as attacks
from tests.fakellm import FakeLLM, Turn
from tests.gated import LEAK_PROBE, assert_no_real_key_inside, assert_only_the_gateway_reached_the_fake, gated_sandbox

MODELS = ["anthropic:claude-sonnet-4-6", "openai:gpt-5", "openai-responses:gpt-5", "google:gemini-2.5-flash"]
CALL_EACH = """
import sys
from autoembed.llm.base import Message
from autoembed.llm.registry import get_llm
for model in sys.argv[1:]:
    print(model, "->", get_llm(model, max_attempts=1).complete([Message("user", text="hi")]).text, flush=True)
"""


@pytest.fixture(scope="module", params=[pytest.param("bwrap", marks=pytest.mark.bwrap),
                                        pytest.param("docker", marks=pytest.mark.docker)])
def gated(request, tmp_path_factory):
    """(sandbox, gateway, agent env, fake): one per engine, with every provider served."""
    with FakeLLM(lambda body: Turn(text="via the gateway", input_tokens=20, output_tokens=5)) as fake:
        with gated_sandbox(request.param, tmp_path_factory.mktemp(request.param) / "workdir", fake, seconds=900,
                           limits=Limits(max_tokens=10_000)) as (box, gateway, env):
            yield box, gateway, env, fake


def test_each_provider_sdk_inside_reaches_the_model_through_the_gateway(gated):
    box, gateway, env, fake = gated
    before = len(fake.requests)
    result = box.exec(["python3", "-c", CALL_EACH, *MODELS], env=env, timeout=120)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [f"{m} -> via the gateway" for m in MODELS], result
    assert len(fake.requests) == before + len(MODELS)
    assert_only_the_gateway_reached_the_fake(fake, gateway)
    rows = [json.loads(line) for line in gateway.log_path.read_text().splitlines()][-len(MODELS):]
    assert [(r["provider"], r["status"], r["usage"]["output_tokens"]) for r in rows] == [
        ("anthropic", 200, 5), ("openai", 200, 5), ("openai", 200, 5), ("gemini", 200, 5)]


def test_the_token_cap_is_enforced_for_calls_from_inside(tmp_path):
    """3,000 tokens a call under a cap of 8,000: each call reserves its prompt and its output cap (4,096), so two go
    out (6,000 used) and the third cannot be covered; the cap is never passed."""
    with FakeLLM(lambda body: Turn(text="x", input_tokens=2_900, output_tokens=100)) as fake:
        with gated_sandbox("bwrap", tmp_path / "workdir", fake, limits=Limits(max_tokens=8_000)) as (box, gateway, env):
            result = box.exec(["python3", "-c", CALL_EACH, *["openai:gpt-5"] * 3], env=env, timeout=120)
    assert result.returncode != 0 and "token budget cannot cover this call" in result.stderr, result
    assert result.stdout.count("-> x") == 2 and len(fake.requests) == 2
    assert gateway.summary()["stopped_by"] == "max_tokens"


def test_nothing_on_the_host_answers_from_inside(gated):
    box, _, _, fake = gated
    attacks.check_no_network(box)  # the host's loopback and its own addresses, and only `lo` inside
    port = fake.url.rsplit(":", 1)[1]  # the model server itself, straight, without the gateway
    result = box.exec(attacks.CONNECT.format(host="127.0.0.1", port=port), timeout=20)
    assert result.returncode != 0 and "pong" not in result.stdout, result


def test_a_server_in_another_network_namespace_does_not_answer(gated):
    box = gated[0]
    with server_in_another_netns() as (address, port):
        result = box.exec(["python3", "-c", FETCH, f"http://{address}:{port}/"], timeout=30)
    assert result.returncode != 0 and "reached" not in result.stdout, result


def test_names_do_not_resolve(gated):
    box = gated[0]
    probe = ("import socket\nfor name in ('pypi.org', 'example.com', 'api.anthropic.com'):\n"
             "    try:\n        print('resolved', name, socket.getaddrinfo(name, 443)[0][4])\n"
             "    except OSError as exc:\n        print('failed', name, exc)\n")
    result = box.exec(["python3", "-c", probe], timeout=60)
    assert result.returncode == 0 and result.stdout.count("failed") == 3 and "resolved" not in result.stdout, result


def test_the_gateway_folder_is_read_only_and_the_keys_are_nowhere(gated):
    box, gateway, env, _ = gated
    result = box.exec("touch /gateway/mine || rm -f /gateway/gateway.sock || echo refused", timeout=30)
    assert gateway.socket_path.exists() and not (gateway.socket_dir / "mine").exists(), result
    box.exec(LEAK_PROBE, env=env, timeout=120)
    assert_no_real_key_inside(box.config.workdir, gateway.token)


# -- a second server, in a network namespace of the test's own ---------------------------------------
FETCH = ("import sys, urllib.request\n"
         "try:\n    urllib.request.urlopen(sys.argv[1], timeout=5); print('reached')\n"
         "except OSError as exc:\n    print('failed', exc); sys.exit(1)\n")


@contextlib.contextmanager
def server_in_another_netns():
    """An HTTP server in a fresh network namespace, joined to the host by a veth pair; the host reaching it is
    the positive control. Skips where namespaces cannot be made (not root)."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"aetest-{tag}", f"vaeh{tag}", f"vaen{tag}"
    subnet = 10 + int(tag[:2], 16) % 200
    host_ip, ns_ip, port = f"10.213.{subnet}.1", f"10.213.{subnet}.2", 18080

    def ip(*args: str, inside: bool = False) -> None:
        argv = ["ip", "netns", "exec", ns, "ip", *args] if inside else ["ip", *args]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    try:
        ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.decode().strip()}")
    server = None
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("addr", "add", f"{ns_ip}/30", "dev", ns_if, inside=True)
        ip("link", "set", ns_if, "up", inside=True)
        ip("link", "set", "lo", "up", inside=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind", ns_ip,
                                   str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert attacks.wait_until(lambda: subprocess.run(
            [sys.executable, "-c", FETCH, f"http://{ns_ip}:{port}/"], capture_output=True).returncode == 0, 10), \
            "positive control: the host cannot reach the server in the other namespace"
        yield ns_ip, port
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", shlex.quote(ns)], capture_output=True)


MISUSE = """
import json, os, sys, threading, urllib.error, urllib.request
base, token = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]
def call(method, path, body=None):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"x-api-key": token, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
hello = [{"role": "user", "content": "hi"}]
out = {"batches": call("POST", "/v1/messages/batches", {"requests": []}), "delete": call("DELETE", "/v1/files/f1"),
       "keys": call("GET", "/v1/organizations/api_keys"),
       "unpriced": call("POST", "/v1/messages", {"model": "claude-3-opus-x", "max_tokens": 9, "messages": hello})}
statuses = []
body = {"model": "claude-opus-4-1-20250805", "max_tokens": 20000, "messages": hello}
threads = [threading.Thread(target=lambda: statuses.append(call("POST", "/v1/messages", body))) for _ in range(40)]
[t.start() for t in threads]
[t.join() for t in threads]
out["concurrent"] = sorted(statuses)
print(json.dumps(out))
"""


def test_misuse_of_the_gateway_from_inside_bwrap_is_refused(tmp_path):
    """From inside bwrap, with the trial's token: batches, a file delete and the organization's keys are refused (403)
    and never reach the provider; an unpriced model is refused; of 40 concurrent $1.50 calls under a $2 cap, one
    goes out."""
    with FakeLLM(lambda body: Turn(text="x", input_tokens=10, output_tokens=20_000)) as fake:
        with gated_sandbox("bwrap", tmp_path / "workdir", fake, limits=Limits(max_usd=2.0),
                           providers=("anthropic",)) as (box, gateway, env):
            result = box.exec(["python3", "-c", MISUSE], env=env, timeout=180)
        assert result.returncode == 0, result
        out = json.loads(result.stdout.splitlines()[-1])
        assert (out["batches"], out["delete"], out["keys"], out["unpriced"]) == (403, 403, 403, 403), out
        assert out["concurrent"] == [200] + [403] * 39, out
        assert [r["path"] for r in fake.requests] == ["/v1/messages"]
    summary = gateway.summary()
    assert summary["refused"] == {"forbidden_path": 3, "unpriced_model": 1, "max_usd": 39}, summary
    assert summary["usage"]["cost_usd"] <= 2.0 and not summary["over_cap"]
