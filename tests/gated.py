"""A sandbox whose one way out is a gateway in front of the fake LLM server, as a trial sets it up: the tests'
fake sits behind the gateway, the gateway holds "real" keys, and the agent inside gets only base URLs and the
trial's token."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest

from autoembed.gateway.server import Gateway, Limits, Upstream
from autoembed.sandbox.base import SandboxConfig, SandboxError
from autoembed.sandbox.factory import make_sandbox
from autoembed.sandbox.none import NoSandbox
from tests.fakellm import FakeLLM

# what the host holds; a test fails if any of these shows up inside a sandbox
REAL_KEYS = {"anthropic": "sk-ant-host-only-7f3a9c", "openai": "sk-host-only-2b8e41", "gemini": "AIza-host-only-5d0c77"}


def upstreams(fake: FakeLLM) -> dict[str, Upstream]:
    return {"anthropic": Upstream(fake.url, REAL_KEYS["anthropic"]),
            "openai": Upstream(fake.url + "/v1", REAL_KEYS["openai"]),
            "gemini": Upstream(fake.url, REAL_KEYS["gemini"])}


@contextlib.contextmanager
def gated_sandbox(kind: str, workdir: Path, fake: FakeLLM, *, seconds: float = 240, limits: Limits | None = None,
                  readonly_extra: list[Path] | None = None, config_kwargs: dict | None = None,
                  providers: tuple[str, ...] = ("anthropic", "openai", "gemini")):
    """(started sandbox, gateway, the agent's env); both stopped on exit. Skips where the engine does not work."""
    if kind == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bwrap not installed (apt-get install bubblewrap)")
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + seconds
    limits = limits or Limits()
    limits.deadline = limits.deadline or deadline
    served = {name: up for name, up in upstreams(fake).items() if name in providers}  # as run.py: the agent's own
    gateway = Gateway(workdir.parent / f"gateway-{kind}", served, limits).start()
    config = SandboxConfig(workdir=workdir, deadline=deadline, gateway_socket=gateway.socket_path,
                           readonly_extra=list(readonly_extra or []), **(config_kwargs or {}))
    try:
        box = NoSandbox(config) if kind == "none" else make_sandbox(kind, config, progress=lambda m: None)
        box.start()
    except SandboxError as exc:
        gateway.stop()
        pytest.skip(f"{kind} sandbox does not start here: {exc}")
    try:
        yield box, gateway, gateway.agent_env(box.gateway_url)
    finally:
        box.stop()
        gateway.stop()


def assert_only_the_gateway_reached_the_fake(fake: FakeLLM, gateway: Gateway) -> None:
    """Every request the fake saw came through the gateway: the real key in place of the token."""
    assert fake.requests, "nothing reached the fake server"
    for request in fake.requests:
        sent = " ".join(str(v) for v in request["headers"].values()) + request["path"]
        assert gateway.token not in sent, "the trial's token travelled past the gateway"
        assert any(key in sent for key in REAL_KEYS.values()), f"a request without the real key: {request['headers']}"


# Run inside by an agent's tool: every environment and command line in the sandbox's /proc, and every file
# under the places a sandbox can write or was given, searched for the host's keys. The pattern is written so
# that the probe's own command line and the agent's session files do not match it.
LEAK_PROBE = ("{ env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline; } 2>/dev/null | tr '\\0' '\\n' > .probe_env; "
              "grep -rIl 'host[-]only' /workdir /gateway /tmp /etc /run /var > .probe_files 2>/dev/null; true")


def assert_no_real_key_inside(workdir: Path, token: str) -> None:
    seen = (workdir / ".probe_env").read_text(errors="replace")
    assert token in seen, "the probe saw no agent environment (positive control)"
    assert not any(key in seen for key in REAL_KEYS.values()), "a real key inside the sandbox's /proc"
    assert (workdir / ".probe_files").read_text().strip() == "", "a real key in a file inside the sandbox"
