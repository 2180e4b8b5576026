"""OpenAI (and OpenAI-compatible servers: vLLM, Ollama, ...) behind autoembed.llm.base.LLM.

Chat Completions by default; api="responses" uses the Responses API. The SDK's own retries are off
(max_retries=0); autoembed.llm.retry is the one policy. OpenAI caches long prompt prefixes on its own:
there is nothing to mark, only the cached token counts to report (Usage.cache_read_tokens).

A local server: OpenAILLM("llama3.1", base_url="http://127.0.0.1:11434/v1") or OPENAI_BASE_URL; a
placeholder key is sent when none is set, since such servers usually ignore it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import openai

from autoembed.llm.base import LLM, LLMError, Message, Response, ToolCall, ToolSpec
from autoembed.llm.pricing import estimate_cost
from autoembed.llm.retry import MAX_ATTEMPTS, MAX_TOTAL_S, TransientError, parse_retry_after, retrying
from autoembed.trace import Usage

APIS = ("chat", "responses")
TRANSIENT_STATUS = {408, 409, 429}  # plus every 5xx (529 included)
LOCAL_KEY_PLACEHOLDER = "not-needed"  # vLLM/Ollama accept any key, the SDK insists on one
UPSTREAM_ENV = "AUTOEMBED_OPENAI_UPSTREAM"  # set by the LLM gateway: the OpenAI-style server behind it


class OpenAILLM(LLM):
    provider = "openai"

    def __init__(self, model: str, *, api: str = "chat", api_key: str | None = None, base_url: str | None = None,
                 timeout: float = 600.0, max_attempts: int = MAX_ATTEMPTS, max_total_s: float = MAX_TOTAL_S):
        super().__init__(model)
        if api not in APIS:
            raise LLMError(f"unknown OpenAI api {api!r}: use one of {APIS}")
        self.api = api
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        # behind the LLM gateway the base URL is always local: the server that really answers is named apart
        upstream = os.environ.get(UPSTREAM_ENV) or self.base_url or ""
        self.compatible = bool(upstream) and "api.openai.com" not in upstream  # vLLM, Ollama, ...
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not self.base_url:
                raise LLMError("OPENAI_API_KEY is not set: export it (or pass api_key=...); for a local "
                               "OpenAI-compatible server pass base_url=... or set OPENAI_BASE_URL instead")
            api_key = LOCAL_KEY_PLACEHOLDER
        self.timeout = timeout
        self.max_attempts, self.max_total_s = max_attempts, max_total_s
        self.client = openai.OpenAI(api_key=api_key, base_url=self.base_url, max_retries=0, timeout=timeout)

    @property
    def where(self) -> str:
        return self.base_url or "the OpenAI API"

    def complete(self, messages: list[Message], *, system: str | None = None, tools: list[ToolSpec] | None = None,
                 max_tokens: int = 4096) -> Response:
        params = self.request(messages, system=system, tools=tools, max_tokens=max_tokens)
        create = self.client.chat.completions.create if self.api == "chat" else self.client.responses.create
        for attempt in retrying(self.max_attempts, self.max_total_s):
            with attempt:
                raw = self._call(create, params)
        response = parse_chat(raw, self.model) if self.api == "chat" else parse_responses(raw, self.model)
        self.total_usage = self.total_usage + response.usage
        return response

    def request(self, messages: list[Message], *, system: str | None, tools: list[ToolSpec] | None,
                max_tokens: int) -> dict[str, Any]:
        """The keyword arguments of chat.completions.create / responses.create (no network)."""
        if self.api == "responses":
            params: dict[str, Any] = {"model": self.model, "input": to_responses_input(messages),
                                      "max_output_tokens": max_tokens, "store": False}
            if system:
                params["instructions"] = system
            if tools:
                params["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                                    "parameters": t.parameters, "strict": False} for t in tools]
            return params
        chat = ([{"role": "system", "content": system}] if system else []) + to_chat_messages(messages)
        # OpenAI's newer models reject max_tokens; compatible servers do not all know max_completion_tokens
        limit_key = "max_tokens" if self.compatible else "max_completion_tokens"
        params = {"model": self.model, "messages": chat, limit_key: max_tokens}
        if tools:
            params["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                                 "parameters": t.parameters}} for t in tools]
        return params

    def _call(self, create, params: dict[str, Any]):
        try:
            return create(**params, timeout=self.timeout)
        except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
            raise TransientError(f"OpenAI request to {self.where} timed out after {self.timeout:g}s") from exc
        except openai.APIConnectionError as exc:
            raise TransientError(f"connection to {self.where} failed: {exc}") from exc
        except openai.APIStatusError as exc:
            raise classify_status(exc, self.model, self.where) from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"OpenAI client error talking to {self.where}: {exc}") from exc


def classify_status(exc: openai.APIStatusError, model: str, where: str = "the OpenAI API") -> Exception:
    """An HTTP error -> TransientError (retry) or LLMError (fail now), with a message that says what to do."""
    status, code, detail = exc.status_code, _error_code(exc), _error_message(exc)
    if status == 429 and code == "insufficient_quota":
        return LLMError(f"OpenAI quota exhausted (HTTP 429 insufficient_quota: {detail}); "
                        "add credit or use another key")
    if status in TRANSIENT_STATUS or status >= 500:
        what = {429: "rate limited", 529: "overloaded", 503: "unavailable"}.get(status, "server error")
        headers = exc.response.headers
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None and (ms := parse_retry_after(headers.get("retry-after-ms"))) is not None:
            retry_after = ms / 1000
        return TransientError(f"OpenAI {what} (HTTP {status}) at {where}: {detail}", retry_after=retry_after)
    if status in (401, 403):
        return LLMError(f"bad or missing OPENAI_API_KEY (HTTP {status} from {where}: {detail}); check the key, "
                        f"and that it may use model {model!r}")
    if status == 404:
        return LLMError(f"model {model!r} or endpoint not found at {where} (HTTP 404: {detail}); "
                        "check the model name and base URL (it usually ends in /v1)")
    if status == 413 or code == "context_length_exceeded" or "context length" in detail.lower():
        return LLMError(f"context too long for {model!r} (HTTP {status} {code or ''}: {detail}); "
                        "shorten the conversation")
    return LLMError(f"OpenAI rejected the request (HTTP {status} {code or ''}) at {where}: {detail}")


def _error_body(exc: openai.APIStatusError) -> dict:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body if isinstance(body, dict) else {}


def _error_code(exc: openai.APIStatusError) -> str | None:
    return getattr(exc, "code", None) or _error_body(exc).get("code")


def _error_message(exc: openai.APIStatusError) -> str:
    return str(_error_body(exc).get("message") or exc.message or exc)


def _arguments(raw: str | None) -> dict[str, Any]:
    """Tool-call arguments arrive as a JSON string; a model can emit broken JSON, which we keep visible."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {"_unparsed_arguments": raw}
    return value if isinstance(value, dict) else {"_value": value}


def _require_call_id(msg: Message) -> str:
    if not msg.tool_call_id:
        raise LLMError(f"tool message for {msg.name!r} has no tool_call_id: set it to the ToolCall.id it answers")
    return msg.tool_call_id


# -- Chat Completions ----------------------------------------------------------------------------
def to_chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role == "user":
            out.append({"role": "user", "content": msg.text or ""})
        elif msg.role == "tool":
            out.append({"role": "tool", "tool_call_id": _require_call_id(msg), "content": msg.text or "(no output)"})
        elif msg.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": msg.text}
            if msg.tool_calls:
                entry["tool_calls"] = [{"id": c.id, "type": "function",
                                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                       for c in msg.tool_calls]
            out.append(entry)
        else:
            raise LLMError(f"unknown message role {msg.role!r}: use 'user', 'assistant' or 'tool'")
    return out


def parse_chat(raw, model: str) -> Response:
    if not raw.choices:
        raise LLMError(f"OpenAI returned no choices for {model!r}")
    choice = raw.choices[0]
    calls = [ToolCall(id=c.id, name=c.function.name, arguments=_arguments(c.function.arguments))
             for c in (choice.message.tool_calls or []) if getattr(c, "function", None) is not None]
    u = raw.usage
    usage = _usage(model, u and u.prompt_tokens, u and u.completion_tokens, getattr(u, "prompt_tokens_details", None))
    return Response(text=choice.message.content or None, tool_calls=calls, usage=usage,
                    stop_reason=choice.finish_reason, model=raw.model)


def _usage(model: str, input_tokens: int | None, output_tokens: int | None, details) -> Usage:
    """Both APIs count cached prompt tokens inside the input total; Usage keeps them apart."""
    cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
    usage = Usage(input_tokens=(input_tokens or 0) - cached, output_tokens=output_tokens or 0, cache_read_tokens=cached)
    usage.cost_usd = estimate_cost(model, usage)
    return usage


# -- Responses -------------------------------------------------------------------------------------
def to_responses_input(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral Messages -> Responses input items. Function calls go back without their item ids, so no
    reasoning item has to accompany them (store=False keeps nothing server-side)."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role == "user":
            out.append({"role": "user", "content": msg.text or ""})
        elif msg.role == "tool":
            out.append({"type": "function_call_output", "call_id": _require_call_id(msg),
                        "output": msg.text or "(no output)"})
        elif msg.role == "assistant":
            if msg.text:
                out.append({"role": "assistant", "content": msg.text})
            out += [{"type": "function_call", "call_id": c.id, "name": c.name, "arguments": json.dumps(c.arguments)}
                    for c in msg.tool_calls]
        else:
            raise LLMError(f"unknown message role {msg.role!r}: use 'user', 'assistant' or 'tool'")
    return out


def parse_responses(raw, model: str) -> Response:
    texts, calls = [], []
    for item in raw.output or []:
        if item.type == "message":
            texts += [part.text for part in item.content if getattr(part, "type", None) == "output_text"]
        elif item.type == "function_call":
            calls.append(ToolCall(id=item.call_id, name=item.name, arguments=_arguments(item.arguments)))
    u = raw.usage
    usage = _usage(model, u and u.input_tokens, u and u.output_tokens, getattr(u, "input_tokens_details", None))
    stop = "tool_calls" if calls else (raw.status or None)
    if raw.status == "incomplete" and raw.incomplete_details is not None:
        stop = f"incomplete:{raw.incomplete_details.reason}"
    return Response(text="".join(texts) if texts else None, tool_calls=calls, usage=usage, stop_reason=stop,
                    model=raw.model)
