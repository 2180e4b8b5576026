"""The three wire APIs the gateway passes through, as data: where each sends its key, how its usage and its
reply read (from one JSON body, or from the events of its stream folded into that same shape), which tool
results a request carries back, and what an error looks like to its SDKs.

Bodies are plain dicts (the JSON on the wire), never SDK objects: the gateway reads what was really sent.
Token counts follow autoembed.trace.Usage: input_tokens is the uncached part of the prompt.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Any

from autoembed.trace import Usage


@dataclass
class Reply:
    """What the model said in one call, provider-neutral (for the trajectory)."""

    text: str = ""
    reasoning: str = ""
    # {"tool_call_id", "function_name", "arguments"}; tool_call_id "" where the upstream sent none (Gemini): the
    # trajectory takes the id the CLI gave it from the next request (Wire.call_ids_in)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def _int(value) -> int:
    return int(value or 0)


def _arguments(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"_raw": raw}
    return parsed if isinstance(parsed, dict) else {"_value": parsed}


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(c.get("text", c.get("content", ""))) if isinstance(c, dict) else str(c)
                         for c in content)
    return "" if content is None else json.dumps(content)


class Wire(abc.ABC):
    """One API family. A subclass names its key header and reads its own bodies."""

    name = "abstract"
    key_header = ""  # where the real key goes on the way out

    def auth_headers(self, key: str, kind: str) -> dict[str, str]:
        return {self.key_header: key}

    def is_stream(self, path: str, body: dict) -> bool:
        return bool(body.get("stream"))

    def model(self, path: str, body: dict, final: dict) -> str:
        return str(final.get("model") or body.get("model") or "")

    def output_limit_key(self, path: str, body: dict) -> tuple[dict, str]:
        """(the dict, the key) that holds a generation request's cap on output tokens (the one it uses, if any)."""
        return body, "max_tokens"

    def max_output(self, path: str, body: dict):
        """The request's cap on output tokens, as sent (None when it sets none)."""
        holder, key = self.output_limit_key(path, body)
        return holder.get(key)

    def set_max_output(self, path: str, body: dict, limit: int) -> None:
        holder, key = self.output_limit_key(path, body)
        holder[key] = limit

    def choices(self, path: str, body: dict):
        """How many replies one request asks for (each up to the output cap), as sent; None for one."""
        return None

    def runs_after_reply(self, path: str, body: dict) -> bool:
        """Whether the request asks the provider to go on working after the reply (nothing the gateway could count)."""
        return False

    @abc.abstractmethod
    def usage(self, final: dict) -> Usage:
        ...

    def declares_usage(self, final: dict) -> bool:
        """Whether the reply states what it used (a stream may not: OpenAI's, without include_usage)."""
        return isinstance(final.get("usage"), dict)

    @abc.abstractmethod
    def reply(self, final: dict) -> Reply:
        ...

    @abc.abstractmethod
    def tool_results(self, body: dict) -> list[tuple[str, str]]:
        """(call id, output) of the tool results this request sends back: what the tools answered. A request that
        replays the whole conversation may carry earlier results too: a later pair with the same id is the newer."""
        ...

    def call_ids_in(self, body: dict) -> list[tuple[str, str]]:
        """(call id, tool name) of the calls the model made in the last model turn this request replays, in order;
        where the upstream's reply had no ids, the client's own are here."""
        return []

    def declared_tools(self, body: dict) -> list[str]:
        """The names of the tools a request offers the model."""
        return sorted({str(t.get("name") or (t.get("function") or {}).get("name") or t.get("type"))
                       for t in body.get("tools") or [] if isinstance(t, dict)})

    @abc.abstractmethod
    def new_stream(self) -> "StreamFold":
        ...

    @abc.abstractmethod
    def error(self, status: int, kind: str, message: str) -> dict:
        ...


class StreamFold(abc.ABC):
    """Folds a stream's event payloads (parsed JSON) into the body the non-streaming call would return."""

    def __init__(self):
        self.final: dict = {}

    @abc.abstractmethod
    def feed(self, event: str | None, data: dict) -> None:
        ...


# -- Anthropic Messages ----------------------------------------------------------------------------
class Anthropic(Wire):
    name = "anthropic"
    key_header = "x-api-key"

    def auth_headers(self, key: str, kind: str) -> dict[str, str]:
        if kind == "oauth":  # a subscription token (CLAUDE_CODE_OAUTH_TOKEN) travels as a bearer
            return {"authorization": f"Bearer {key}", "anthropic-beta": "oauth-2025-04-20"}
        return {"x-api-key": key}

    def usage(self, final: dict) -> Usage:
        raw = final.get("usage") or {}
        return Usage(input_tokens=_int(raw.get("input_tokens")), output_tokens=_int(raw.get("output_tokens")),
                     cache_read_tokens=_int(raw.get("cache_read_input_tokens")),
                     cache_write_tokens=_int(raw.get("cache_creation_input_tokens")))

    def reply(self, final: dict) -> Reply:
        reply = Reply()
        for block in final.get("content") or []:
            kind = block.get("type")
            if kind == "text":
                reply.text += block.get("text", "")
            elif kind == "thinking":
                reply.reasoning += block.get("thinking", "")
            elif kind in ("tool_use", "server_tool_use"):
                reply.tool_calls.append({"tool_call_id": block.get("id", ""), "function_name": block.get("name", ""),
                                         "arguments": _arguments(block.get("input"))})
        return reply

    def tool_results(self, body: dict) -> list[tuple[str, str]]:
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content") if isinstance(last, dict) else None
        return [(b.get("tool_use_id", ""), _text_of(b.get("content"))) for b in content or []
                if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(content, list) else []

    def new_stream(self) -> StreamFold:
        return _AnthropicFold()

    def error(self, status: int, kind: str, message: str) -> dict:
        types = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 504: "timeout_error"}
        return {"type": "error", "error": {"type": types.get(status, "api_error"), "message": message}}


class _AnthropicFold(StreamFold):
    def __init__(self):
        super().__init__()
        self._json: dict[int, str] = {}

    def feed(self, event, data):
        kind = data.get("type")
        if kind == "message_start":
            self.final = {**data.get("message", {}), "content": []}
        elif kind == "content_block_start":
            self.final.setdefault("content", []).append(dict(data.get("content_block") or {}))
        elif kind == "content_block_delta":
            blocks, delta = self.final.get("content") or [{}], data.get("delta") or {}
            index = min(int(data.get("index", len(blocks) - 1)), len(blocks) - 1)
            block = blocks[index]
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif delta.get("type") == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif delta.get("type") == "input_json_delta":
                self._json[index] = self._json.get(index, "") + delta.get("partial_json", "")
                block["input"] = _arguments(self._json[index]) if self._json[index] else {}
        elif kind == "message_delta":
            self.final.update({k: v for k, v in (data.get("delta") or {}).items()})
            # the final delta's usage holds the output count (cumulative), sometimes the input counts again
            self.final["usage"] = {**(self.final.get("usage") or {}), **(data.get("usage") or {})}


# -- OpenAI Chat Completions and Responses -----------------------------------------------------------
RESPONSES_OUTPUTS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")


class OpenAI(Wire):
    """Chat Completions (/chat/completions) and Responses (/responses) share a key and an error shape;
    which one a call used is read from its body (Responses sends `input`, Chat `messages`)."""

    name = "openai"

    def output_limit_key(self, path: str, body: dict) -> tuple[dict, str]:
        if path.rstrip("/").endswith("responses"):
            return body, "max_output_tokens"
        # Chat: OpenAI itself reads max_completion_tokens (and refuses max_tokens for its reasoning models); local
        # servers read max_tokens. A request that sets neither gets max_completion_tokens.
        return body, "max_tokens" if "max_tokens" in body and "max_completion_tokens" not in body \
            else "max_completion_tokens"

    def choices(self, path: str, body: dict):
        return None if path.rstrip("/").endswith("responses") else body.get("n")

    def runs_after_reply(self, path: str, body: dict) -> bool:
        return bool(body.get("background"))  # Responses in the background: generated and billed after the trial

    def auth_headers(self, key: str, kind: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def usage(self, final: dict) -> Usage:
        raw = final.get("usage") or {}
        if "input_tokens" in raw:  # Responses
            total_in, out, details = raw.get("input_tokens"), raw.get("output_tokens"), raw.get("input_tokens_details")
        else:
            total_in, out, details = raw.get("prompt_tokens"), raw.get("completion_tokens"), raw.get("prompt_tokens_details")
        cached = _int((details or {}).get("cached_tokens"))
        return Usage(input_tokens=max(0, _int(total_in) - cached), output_tokens=_int(out), cache_read_tokens=cached)

    def reply(self, final: dict) -> Reply:
        reply = Reply()
        if "output" in final:  # Responses
            for item in final.get("output") or []:
                if item.get("type") == "message":
                    reply.text += "".join(c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict))
                elif item.get("type") == "reasoning":
                    reply.reasoning += "".join(s.get("text", "") for s in item.get("summary") or [])
                elif item.get("type") == "function_call":
                    reply.tool_calls.append({"tool_call_id": item.get("call_id", ""), "function_name": item.get("name", ""),
                                             "arguments": _arguments(item.get("arguments"))})
                elif item.get("type") == "custom_tool_call":  # a freeform tool (Codex's default model): raw text in
                    reply.tool_calls.append({"tool_call_id": item.get("call_id", ""), "function_name": item.get("name", ""),
                                             "arguments": {"input": item.get("input", "")}})
                elif item.get("type") == "local_shell_call":
                    reply.tool_calls.append({"tool_call_id": item.get("call_id", ""), "function_name": "local_shell",
                                             "arguments": item.get("action") or {}})
            return reply
        message = ((final.get("choices") or [{}])[0] or {}).get("message") or {}
        reply.text = _text_of(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            reply.tool_calls.append({"tool_call_id": call.get("id", ""), "function_name": function.get("name", ""),
                                     "arguments": _arguments(function.get("arguments"))})
        return reply

    def tool_results(self, body: dict) -> list[tuple[str, str]]:
        if "input" in body:
            items = body["input"] if isinstance(body["input"], list) else []
            return [(i.get("call_id", ""), _text_of(i.get("output"))) for i in items
                    if isinstance(i, dict) and i.get("type") in RESPONSES_OUTPUTS]
        results = []
        for message in reversed(body.get("messages") or []):  # the tool messages after the last assistant turn
            if message.get("role") != "tool":
                break
            results.insert(0, (message.get("tool_call_id", ""), _text_of(message.get("content"))))
        return results

    def declared_tools(self, body: dict) -> list[str]:
        tools = list(body.get("tools") or [])
        for item in body.get("input") if isinstance(body.get("input"), list) else []:
            if isinstance(item, dict) and item.get("type") == "additional_tools":  # Codex declares its tools here
                tools += item.get("tools") or []
        names = set()
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "namespace":
                names |= {str(t.get("name")) for t in tool.get("tools") or [] if isinstance(t, dict)}
            elif isinstance(tool, dict):
                names.add(str(tool.get("name") or (tool.get("function") or {}).get("name") or tool.get("type")))
        return sorted(names)

    def new_stream(self) -> StreamFold:
        return _OpenAIFold()

    def error(self, status: int, kind: str, message: str) -> dict:
        return {"error": {"message": message, "type": kind, "code": kind, "param": None}}


class _OpenAIFold(StreamFold):
    def __init__(self):
        super().__init__()
        self._calls: dict[int, dict] = {}
        self._text: list[str] = []

    def feed(self, event, data):
        kind = data.get("type", "")
        if kind.startswith("response."):  # Responses: the completed event carries the whole response
            if isinstance(data.get("response"), dict) and (kind in ("response.completed", "response.incomplete",
                                                                    "response.failed") or not self.final):
                self.final = data["response"]
            return
        if data.get("object") != "chat.completion.chunk":
            return
        self.final.setdefault("model", data.get("model"))
        if data.get("usage"):
            self.final["usage"] = data["usage"]
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._text.append(delta["content"])
            for piece in delta.get("tool_calls") or []:
                call = self._calls.setdefault(int(piece.get("index", 0)), {"id": "", "function": {"name": "", "arguments": ""}})
                call["id"] = piece.get("id") or call["id"]
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
        message = {"role": "assistant", "content": "".join(self._text),
                   "tool_calls": [self._calls[i] for i in sorted(self._calls)]}
        self.final["choices"] = [{"index": 0, "message": message}]


# -- Gemini generateContent / streamGenerateContent ----------------------------------------------------
class Gemini(Wire):
    name = "gemini"
    key_header = "x-goog-api-key"

    def auth_headers(self, key: str, kind: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def is_stream(self, path: str, body: dict) -> bool:
        return ":streamGenerateContent" in path

    def max_output(self, path: str, body: dict):
        config = body.get("generationConfig")
        return config.get("maxOutputTokens") if isinstance(config, dict) else None

    def choices(self, path: str, body: dict):
        config = body.get("generationConfig")
        return config.get("candidateCount") if isinstance(config, dict) else None

    def set_max_output(self, path: str, body: dict, limit: int) -> None:
        if not isinstance(body.get("generationConfig"), dict):
            body["generationConfig"] = {}
        body["generationConfig"]["maxOutputTokens"] = limit

    def model(self, path: str, body: dict, final: dict) -> str:
        named = path.split("/models/", 1)[1].split(":", 1)[0] if "/models/" in path else ""
        return str(final.get("modelVersion") or named)

    def declares_usage(self, final: dict) -> bool:
        return isinstance(final.get("usageMetadata"), dict)

    def usage(self, final: dict) -> Usage:
        raw = final.get("usageMetadata") or {}
        cached = _int(raw.get("cachedContentTokenCount"))
        prompt = _int(raw.get("promptTokenCount")) + _int(raw.get("toolUsePromptTokenCount"))
        return Usage(input_tokens=max(0, prompt - cached), cache_read_tokens=cached,
                     output_tokens=_int(raw.get("candidatesTokenCount")) + _int(raw.get("thoughtsTokenCount")))

    def reply(self, final: dict) -> Reply:
        reply = Reply()
        candidate = (final.get("candidates") or [{}])[0] or {}
        for part in (candidate.get("content") or {}).get("parts") or []:
            if part.get("functionCall"):
                call = part["functionCall"]
                reply.tool_calls.append({"tool_call_id": call.get("id") or "", "function_name": call.get("name", ""),
                                         "arguments": _arguments(call.get("args"))})
            elif part.get("thought"):
                reply.reasoning += part.get("text", "")
            elif "text" in part:
                reply.text += part.get("text", "")
        return reply

    def tool_results(self, body: dict) -> list[tuple[str, str]]:
        contents = body.get("contents") or []
        last = contents[-1] if contents else {}
        results = []
        for part in (last.get("parts") or []) if isinstance(last, dict) else []:
            response = part.get("functionResponse") if isinstance(part, dict) else None
            if response:
                results.append((response.get("id") or response.get("name", ""), _text_of(response.get("response"))))
        return results

    def call_ids_in(self, body: dict) -> list[tuple[str, str]]:
        turns = [c for c in body.get("contents") or [] if isinstance(c, dict) and c.get("role") == "model"]
        parts = (turns[-1].get("parts") or []) if turns else []
        return [(p["functionCall"].get("id") or "", p["functionCall"].get("name", "")) for p in parts
                if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)]

    def declared_tools(self, body: dict) -> list[str]:
        return sorted({str(d.get("name")) for t in body.get("tools") or [] if isinstance(t, dict)
                       for d in t.get("functionDeclarations") or [] if isinstance(d, dict)})

    def new_stream(self) -> StreamFold:
        return _GeminiFold()

    def error(self, status: int, kind: str, message: str) -> dict:
        statuses = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 504: "DEADLINE_EXCEEDED"}
        return {"error": {"code": status, "message": message, "status": statuses.get(status, "UNAVAILABLE"),
                          "details": [{"reason": kind}]}}


class _GeminiFold(StreamFold):
    """Each chunk is a GenerateContentResponse with the next parts; usageMetadata is cumulative."""

    def feed(self, event, data):
        parts = []
        for candidate in data.get("candidates") or []:
            parts += (candidate.get("content") or {}).get("parts") or []
        if not self.final:
            self.final = {"candidates": [{"content": {"role": "model", "parts": []}}]}
        merged = self.final["candidates"][0]["content"]["parts"]
        for part in parts:
            if "text" in part and merged and "text" in merged[-1] and bool(part.get("thought")) == bool(merged[-1].get("thought")):
                merged[-1] = {**merged[-1], "text": merged[-1]["text"] + part["text"]}
            else:
                merged.append(dict(part))
        for key in ("usageMetadata", "modelVersion", "responseId"):
            if data.get(key):
                self.final[key] = data[key]


WIRES: dict[str, Wire] = {w.name: w for w in (Anthropic(), OpenAI(), Gemini())}
