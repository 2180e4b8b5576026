"""Anthropic Messages API on the fake server: POST /v1/messages (JSON, or SSE when stream=true) and
POST /v1/messages/count_tokens. Test code only.

Prompt caching is simulated so callers can check their cache_control markers: a request that marks
any block with cache_control reports the marked prefix as cache_creation_input_tokens the first
time that prefix is seen and as cache_read_input_tokens afterwards.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from tests.fakellm.server import FakeLLM, Turn, route, send_json, send_sse


def _has_cache_control(value) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


def _cache_usage(fake: FakeLLM, body: dict) -> tuple[int, int]:
    """(cache_creation, cache_read) for the cached prefix: system + tools (the part a caller marks)."""
    if not _has_cache_control(body):
        return 0, 0
    prefix = json.dumps([body.get("system"), body.get("tools")], sort_keys=True)
    tokens = max(1, len(prefix) // 4)
    key = hashlib.sha256(prefix.encode()).hexdigest()
    seen = fake.__dict__.setdefault("anthropic_cache", set())
    if key in seen:
        return 0, tokens
    seen.add(key)
    return tokens, 0


def _content(turn: Turn) -> list[dict]:
    blocks: list[dict] = []
    if turn.text:
        blocks.append({"type": "text", "text": turn.text})
    for name, args in turn.tool_calls:
        blocks.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": args})
    return blocks


def _usage(turn: Turn, cache: tuple[int, int]) -> dict:
    scripted_read = getattr(turn, "cache_read_tokens", 0)  # a Turn may also script cache reads outright
    return {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens,
            "cache_creation_input_tokens": cache[0], "cache_read_input_tokens": cache[1] + scripted_read}


@route("POST", r"/v1/messages")
def messages(fake: FakeLLM, handler, match, body: dict) -> None:
    turn = fake.next_turn(body)
    content = _content(turn)
    stop_reason = "tool_use" if turn.tool_calls else "end_turn"
    usage = _usage(turn, _cache_usage(fake, body))
    message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
               "model": body.get("model", "claude-fake"), "content": content, "stop_reason": stop_reason,
               "stop_sequence": None, "usage": usage}
    if not body.get("stream"):
        send_json(handler, 200, message)
        return
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[tuple[str | None, dict]] = [("message_start", {"type": "message_start", "message": start}),
                                             ("ping", {"type": "ping"})]
    for index, block in enumerate(content):
        if block["type"] == "text":
            events += [
                ("content_block_start", {"type": "content_block_start", "index": index,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": index,
                                         "delta": {"type": "text_delta", "text": block["text"]}}),
            ]
        else:
            partial = json.dumps(block["input"])
            half = len(partial) // 2  # two deltas, as the real API splits tool input
            events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            for piece in (partial[:half], partial[half:]):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "input_json_delta", "partial_json": piece}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events += [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                           "usage": {"output_tokens": turn.output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    send_sse(handler, events)


@route("POST", r"/v1/messages/count_tokens")
def count_tokens(fake: FakeLLM, handler, match, body: dict) -> None:
    send_json(handler, 200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})

