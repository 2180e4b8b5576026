"""The loop's own LLM gateway for its meta-agent: one per loop session, so that every request the
meta-agent's model receives is logged on the host (meta/gateway/gateway_bodies.jsonl) and its spend is
counted by the gateway, not by the client. The meta-agent's SDK gets the gateway's URL and token, never
the host's key. Its log folder outlives a session: --resume appends to the same log, and summary.json
keeps the totals of the sessions before.

A meta-agent's request carries its whole conversation so far, so logging each body whole would grow the log with
the square of the turns. gateway_bodies.jsonl here holds each request as a delta of the one before: a list field
(messages, input, contents) that starts with the previous request's list keeps only its new items, and a large
field equal to the previous request's (the system prompt, the tools) names that call instead; read_requests()
puts every request back together.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from pathlib import Path

from autoembed.gateway.server import BASE_URL_ENV, KEY_ENV, Gateway, Limits, upstreams_from_env
from autoembed.llm.registry import parse_model
from autoembed.records import write_text_atomic

GATEWAY_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "openai-responses": "openai", "google": "gemini"}
TOTALS = ("calls", "input_tokens", "output_tokens", "cost_usd")
TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
SAME_AS = "$same_as_call"  # a field equal to that call's
PREFIX_OF = "$prefix_of_call"  # a list that starts with that call's list: {PREFIX_OF: id, "$kept": k, "$new": [...]}
SHARED_MIN_CHARS = 256  # fields shorter than this are logged as they are


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
        self.gateway = DeltaLogGateway(self.log_dir, {provider: upstream}, Limits(max_usd=cap), tcp=True,
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
        write_text_atomic(self.summary_path, json.dumps(summary, indent=2, default=str))
        return summary


class DeltaLogGateway(Gateway):
    """The gateway, logging each request body as a delta of the one before it (see the module's docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._session = secrets.token_hex(3)  # call ids stay unique across the sessions of a resumed loop
        self._calls = 0
        self._previous: tuple[str, dict] | None = None  # (call id, {field: (digest, item digests | None)})
        self._delta_lock = threading.Lock()

    def _log(self, record: dict, bodies: dict, *args, **kwargs) -> None:
        with self._delta_lock:
            self._calls += 1
            call = f"{self._session}-{self._calls}"
            request = bodies.get("request")
            if isinstance(request, dict):
                bodies = {**bodies, "request": self._delta(call, request)}
            super()._log(record, {**bodies, "call": call}, *args, **kwargs)

    def _delta(self, call: str, request: dict) -> dict:
        before_call, before = self._previous or (None, {})
        now, out = {}, {}
        for key, value in request.items():
            items = [_digest(v) for v in value] if isinstance(value, list) else None
            now[key] = (_digest(value), items)
            prev = before.get(key)
            if prev is not None and prev[0] == now[key][0] and len(json.dumps(value, default=str)) >= SHARED_MIN_CHARS:
                out[key] = {SAME_AS: before_call}
            elif prev is not None and items is not None and prev[1] and (kept := _common_prefix(items, prev[1])):
                out[key] = {PREFIX_OF: before_call, "$kept": kept, "$new": value[kept:]}
            else:
                out[key] = value
        self._previous = (call, now)
        return out


def _common_prefix(a: list[str], b: list[str]) -> int:
    """How many items the two lists share from the start (a client may mark the last message of each request,
    e.g. with a prompt-cache breakpoint, so the previous request's last item can differ in this one)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8", "surrogatepass")).hexdigest()


def read_requests(log_dir: Path) -> list[dict]:
    """Every request body of gateway_bodies.jsonl put back together, in order (None for a refused one)."""
    whole: dict[str, dict] = {}
    out = []
    for line in (Path(log_dir) / "gateway_bodies.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        request = row.get("request")
        if isinstance(request, dict):
            request = {key: _expand(value, key, whole) for key, value in request.items()}
            whole[row.get("call")] = request
        out.append(request)
    return out


def _expand(value, key: str, whole: dict[str, dict]):
    if isinstance(value, dict) and SAME_AS in value:
        return whole[value[SAME_AS]][key]
    if isinstance(value, dict) and PREFIX_OF in value:
        return whole[value[PREFIX_OF]][key][:value["$kept"]] + value["$new"]
    return value


def usage_from_log(log_dir: Path) -> dict | None:
    """The meta-agent's LLM use from the gateway's own log (gateway.jsonl, one row per call, every session of
    the loop): answered calls, failed or refused calls, tokens and dollars (of every call the gateway charged,
    failed ones included), in all and per model. None when the loop ran no gateway."""
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
        # answered: a reply came (no error, a status below 400); a failed call may still be charged (a stream cut
        # after the provider began, a reservation the gateway settled), and its dollars count all the same
        failed = usage is None or bool(record.get("error")) or (record.get("status") or 200) >= 400
        total["failed_calls"] += failed
        if usage is None:
            continue
        per_model = models.setdefault(record.get("model") or "?", {"calls": 0, "tokens": 0, "cost_usd": 0.0})
        tokens = sum(usage.get(k) or 0 for k in TOKEN_KINDS)
        total["calls"] += not failed
        per_model["calls"] += not failed
        per_model["tokens"] += tokens
        for key in TOKEN_KINDS:
            total[key] += usage.get(key) or 0
        if usage.get("cost_usd") is None:
            total["unpriced_calls"] += 1
        else:
            total["cost_usd"] += usage["cost_usd"]
            per_model["cost_usd"] += usage["cost_usd"]
    return {**total, "models": models, "log": str(path)}

