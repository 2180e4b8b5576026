"""Anthropic Messages API behind autoembed.llm.base.LLM.

The SDK's own retries are off (max_retries=0); autoembed.llm.retry is the one policy. Prompt caching:
cache_control breakpoints on the system prompt, the last tool and the last message block, so each
call re-reads the previous call's prefix from the cache (3 of the 4 breakpoints the API allows).
"""

from __future__ import annotations

import os
from typing import Any

import anthropic

from autoembed.llm.base import LLM, LLMError, Message, Response, ToolCall, ToolSpec
from autoembed.llm.pricing import estimate_cost
from autoembed.llm.retry import MAX_ATTEMPTS, MAX_TOTAL_S, TransientError, parse_retry_after, retrying
from autoembed.trace import Usage

CACHE = {"type": "ephemeral"}
TRANSIENT_STATUS = {408, 409, 429, 529}  # plus every 5xx


class AnthropicLLM(LLM):
    provider = "anthropic"

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None, timeout: float = 600.0,
                 max_attempts: int = MAX_ATTEMPTS, max_total_s: float = MAX_TOTAL_S, cache: bool = True):
        super().__init__(model)
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        auth_token = None if api_key else os.environ.get("ANTHROPIC_AUTH_TOKEN")
        if not api_key and not auth_token:
            raise LLMError("bad or missing ANTHROPIC_API_KEY: set it in the environment (or pass api_key=...)")
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.timeout = timeout
        self.max_attempts, self.max_total_s, self.cache = max_attempts, max_total_s, cache
        self.client = anthropic.Anthropic(api_key=api_key, auth_token=auth_token, base_url=self.base_url,
                                          max_retries=0, timeout=timeout)

    def complete(self, messages: list[Message], *, system: str | None = None, tools: list[ToolSpec] | None = None,
                 max_tokens: int = 4096) -> Response:
        params = self.request(messages, system=system, tools=tools, max_tokens=max_tokens)
        for attempt in retrying(self.max_attempts, self.max_total_s):
            with attempt:
                raw = self._call(params)
        response = parse_response(raw, self.model)
        self.total_usage = self.total_usage + response.usage
        return response

    def request(self, messages: list[Message], *, system: str | None, tools: list[ToolSpec] | None,
                max_tokens: int) -> dict[str, Any]:
        """The keyword arguments of messages.create for this conversation (no network)."""
        params: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens,
                                  "messages": to_anthropic_messages(messages)}
        if system:
            params["system"] = [{"type": "text", "text": system}]
        if tools:
            params["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                               for t in tools]
        if self.cache:
            for blocks in (params.get("system"), params.get("tools"), params["messages"][-1]["content"]):
                if blocks:
                    blocks[-1]["cache_control"] = CACHE
        return params

    def _call(self, params: dict[str, Any]):
        try:
            return self.client.messages.create(**params, timeout=self.timeout)
        except anthropic.APITimeoutError as exc:
            raise TransientError(f"Anthropic request timed out after {self.timeout:g}s") from exc
        except anthropic.APIConnectionError as exc:
            raise TransientError(f"connection to {self.base_url or 'the Anthropic API'} failed: {exc}") from exc
        except anthropic.APIStatusError as exc:
            raise classify_status(exc, self.model) from exc


def classify_status(exc: anthropic.APIStatusError, model: str) -> Exception:
    """An HTTP error -> TransientError (retry) or LLMError (fail now), with a message that says what to do."""
    status, detail = exc.status_code, _error_message(exc)
    if status in TRANSIENT_STATUS or status >= 500:
        what = {429: "rate limited", 529: "overloaded"}.get(status, "server error")
        return TransientError(f"Anthropic {what} (HTTP {status}): {detail}",
                              retry_after=parse_retry_after(exc.response.headers.get("retry-after")))
    if status in (401, 403):
        return LLMError(f"bad or missing ANTHROPIC_API_KEY (HTTP {status}: {detail}); check the key, "
                        f"and that it may use model {model!r}")
    if status == 404:
        return LLMError(f"model {model!r} not found (HTTP 404: {detail}); check the model name")
    if status == 413 or (status == 400 and _is_context_error(detail)):
        return LLMError(f"context too long for {model!r} (HTTP {status}: {detail}); shorten the conversation")
    return LLMError(f"Anthropic rejected the request (HTTP {status}): {detail}")


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"])
    return str(exc.message or exc)


def _is_context_error(detail: str) -> bool:
    detail = detail.lower()
    return "prompt is too long" in detail or ("context" in detail and ("length" in detail or "window" in detail))


def to_anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral Messages -> the Messages API's alternating user/assistant turns.

    Tool results become tool_result blocks in a user turn; consecutive user-side messages (several
    tool results, then perhaps a user note) merge into one turn, as the API requires.
    """
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for msg in messages:
        if msg.role == "user":
            add("user", [{"type": "text", "text": msg.text or "(empty)"}])
        elif msg.role == "tool":
            if not msg.tool_call_id:
                raise LLMError(f"tool message for {msg.name!r} has no tool_call_id: set it to the ToolCall.id it answers")
            add("user", [{"type": "tool_result", "tool_use_id": msg.tool_call_id, "content": msg.text or "(no output)"}])
        elif msg.role == "assistant":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": msg.text}] if msg.text else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in msg.tool_calls]
            add("assistant", blocks or [{"type": "text", "text": "(empty)"}])
        else:
            raise LLMError(f"unknown message role {msg.role!r}: use 'user', 'assistant' or 'tool'")
    if not out or out[0]["role"] != "user":
        raise LLMError("the conversation must start with a user message")
    return out


def parse_response(raw, model: str) -> Response:
    texts, calls = [], []
    for block in raw.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(block.input or {})))
    u = raw.usage
    usage = Usage(input_tokens=u.input_tokens or 0, output_tokens=u.output_tokens or 0,
                  cache_read_tokens=getattr(u, "cache_read_input_tokens", None) or 0,
                  cache_write_tokens=getattr(u, "cache_creation_input_tokens", None) or 0)
    usage.cost_usd = estimate_cost(model, usage)
    return Response(text="".join(texts) if texts else None, tool_calls=calls, usage=usage,
                    stop_reason=raw.stop_reason, model=raw.model)
