"""The loop's own LLM gateway for its meta-agent: one per loop session, so that every request the
meta-agent's model receives is logged on the host (meta/gateway/gateway_bodies.jsonl) and its spend is
counted by the gateway, not by the client. The meta-agent's SDK gets the gateway's URL and token, never
the host's key. Its log folder outlives a session: --resume appends to the same log, and summary.json
keeps the totals of the sessions before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from autoembed.gateway.server import BASE_URL_ENV, KEY_ENV, Gateway, Limits, upstreams_from_env
from autoembed.llm.registry import parse_model

GATEWAY_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "openai-responses": "openai", "google": "gemini"}
TOTALS = ("calls", "input_tokens", "output_tokens", "cost_usd")


class MetaGateway:
    def __init__(self, model: str, log_dir: Path, max_usd: float | None = None):
        provider = GATEWAY_PROVIDER[parse_model(model)[0]]
        upstream = upstreams_from_env().get(provider)
        if upstream is None:
            raise ValueError(f"--meta {model}: no {provider} key or base URL in the environment for the meta-agent's "
                             f"gateway; set {KEY_ENV[provider][0][0]} (or {BASE_URL_ENV[provider]} for a local server)")
        self.log_dir = Path(log_dir)
        self.summary_path = self.log_dir / "summary.json"
        earlier = _read(self.summary_path).get("total") or {}  # the sessions before this one (--resume)
        self.before = {k: earlier.get(k) or 0 for k in TOTALS}
        self.gateway = Gateway(self.log_dir, {provider: upstream}, Limits(max_usd=max_usd), tcp=True)
        self.provider = provider

    def start(self) -> "MetaGateway":
        self.gateway.start()
        return self

    @property
    def base_url(self) -> str:
        return self.gateway.agent_env(self.gateway.tcp_url)[BASE_URL_ENV[self.provider]]

    @property
    def token(self) -> str:
        return self.gateway.token

    def totals(self) -> dict:
        """Calls, tokens and dollars by the gateway's count, over every session of this loop."""
        s = self.gateway.summary()
        now = {"calls": s["calls"], **{k: s["usage"].get(k) or 0 for k in TOTALS[1:]}}
        return {k: self.before[k] + now[k] for k in TOTALS}

    def stop(self) -> dict:
        self.gateway.stop()
        summary = {"total": self.totals(), "last_session": self.gateway.summary()}
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, self.summary_path)
        return summary


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
