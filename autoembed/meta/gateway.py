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
TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


class MetaGateway:
    """max_usd: the dollars the meta-agent may spend over every session of the loop (what --max-cost leaves after
    the trials); the calls of earlier sessions count against it."""

    def __init__(self, model: str, log_dir: Path, max_usd: float | None = None):
        provider = GATEWAY_PROVIDER[parse_model(model)[0]]
        upstream = upstreams_from_env().get(provider)
        if upstream is None:
            raise ValueError(f"--meta {model}: no {provider} key or base URL in the environment for the meta-agent's "
                             f"gateway; set {KEY_ENV[provider][0][0]} (or {BASE_URL_ENV[provider]} for a local server)")
        self.log_dir = Path(log_dir)
        self.summary_path = self.log_dir / "summary.json"
        # the sessions before this one (--resume), from the log itself: a session killed with SIGKILL never wrote
        # summary.json, but every call it made is a row of gateway.jsonl
        earlier = usage_from_log(self.log_dir) or {}
        self.before = {k: earlier.get(k) or 0 for k in TOTALS}
        cap = None if max_usd is None else max(max_usd - self.before["cost_usd"], 0.0)
        self.gateway = Gateway(self.log_dir, {provider: upstream}, Limits(max_usd=cap), tcp=True,
                               budget_name="the loop's (--max-cost)")
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


def usage_from_log(log_dir: Path) -> dict | None:
    """The meta-agent's LLM use from the gateway's own log (gateway.jsonl, one row per call, every session of
    the loop): calls, failed or refused calls, tokens and estimated dollars, in all and per model. None when
    the loop ran no gateway."""
    path = Path(log_dir) / "gateway.jsonl"
    if not path.is_file():
        return None
    total = {"calls": 0, "failed_calls": 0, "unpriced_calls": 0, "input_tokens": 0, "output_tokens": 0,
             "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": 0.0}
    models: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        usage = record.get("usage")
        if usage is None:
            total["failed_calls"] += 1
            continue
        per_model = models.setdefault(record.get("model") or "?", {"calls": 0, "tokens": 0, "cost_usd": 0.0})
        tokens = sum(usage.get(k) or 0 for k in TOKEN_KINDS)
        total["calls"] += 1
        per_model["calls"] += 1
        per_model["tokens"] += tokens
        for key in TOKEN_KINDS:
            total[key] += usage.get(key) or 0
        if usage.get("cost_usd") is None:
            total["unpriced_calls"] += 1
        else:
            total["cost_usd"] += usage["cost_usd"]
            per_model["cost_usd"] += usage["cost_usd"]
    return {**total, "models": models, "log": str(path)}

