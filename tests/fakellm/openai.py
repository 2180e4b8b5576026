"""OpenAI wire formats for the fake server: Chat Completions and Responses, JSON and SSE.

POST /v1/chat/completions  -> chat.completion (or chat.completion.chunk SSE ending in [DONE] when stream=true)
POST /v1/responses         -> response (or the response.* SSE events the Responses API streams; codex uses these)
GET  /v1/models            -> a model listing, the cheap call a key check makes (Anthropic's listing has the same
                              "data" shape, so it serves both)

Both turn the next scripted Turn into assistant text and function calls. Test code only.
"""

from __future__ import annotations

import itertools
import json
import time
from http.server import BaseHTTPRequestHandler

from tests.fakellm.server import FakeLLM, Turn, route, send_json, send_sse_frames

_ids = itertools.count(1)


def _next_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def _cached(turn: Turn) -> int:
    return turn.cache_read_tokens


# -- Chat Completions --------------------------------------------------------------------------
def _chat_usage(turn: Turn) -> dict:
    # prompt_tokens counts cached ones too; prompt_tokens_details.cached_tokens says how many of them
    prompt = turn.input_tokens + _cached(turn)
    return {"prompt_tokens": prompt, "completion_tokens": turn.output_tokens,
            "total_tokens": prompt + turn.output_tokens,
            "prompt_tokens_details": {"cached_tokens": _cached(turn), "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}


def _chat_tool_calls(turn: Turn) -> list[dict]:
    return [{"id": _next_id("call"), "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for name, args in turn.tool_calls]


@route("POST", r"/v1/chat/completions|/chat/completions")
def chat_completions(fake: FakeLLM, handler: BaseHTTPRequestHandler, match, body: dict) -> None:
    turn = fake.next_turn(body)
    model = body.get("model", "fake-model")
    tool_calls = _chat_tool_calls(turn)
    finish = "tool_calls" if tool_calls else "stop"
    cid, created = _next_id("chatcmpl"), int(time.time())
    if not body.get("stream"):
        message = {"role": "assistant", "content": turn.text, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        send_json(handler, 200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                                 "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                              "logprobs": None}],
                                 "usage": _chat_usage(turn)})
        return

    def chunk(delta: dict, finish_reason: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
        data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if choices else []}
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n"

    frames = [chunk({"role": "assistant", "content": ""})]
    if turn.text:
        half = len(turn.text) // 2
        frames += [chunk({"content": turn.text[:half]}), chunk({"content": turn.text[half:]})]
    for index, call in enumerate(tool_calls):
        # name first, then the arguments in two pieces, as the real API streams them
        args = call["function"]["arguments"]
        frames.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        frames.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": args[: len(args) // 2]}}]}))
        frames.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": args[len(args) // 2:]}}]}))
    frames.append(chunk({}, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        frames.append(chunk({}, usage=_chat_usage(turn), choices=False))
    frames.append("data: [DONE]\n\n")
    send_sse_frames(handler, frames)


# -- Responses -------------------------------------------------------------------------------------
def _responses_usage(turn: Turn) -> dict:
    total_in = turn.input_tokens + _cached(turn)
    return {"input_tokens": total_in, "input_tokens_details": {"cached_tokens": _cached(turn)},
            "output_tokens": turn.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": total_in + turn.output_tokens}


def _responses_output(turn: Turn) -> list[dict]:
    items = []
    if turn.text is not None:
        items.append({"type": "message", "id": _next_id("msg"), "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": turn.text, "annotations": []}]})
    for name, args in turn.tool_calls:
        items.append({"type": "function_call", "id": _next_id("fc"), "call_id": _next_id("call"), "name": name,
                      "arguments": json.dumps(args), "status": "completed"})
    return items


def _response_object(rid: str, body: dict, status: str, output: list[dict], usage: dict | None) -> dict:
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "model": body.get("model", "fake-model"), "output": output, "usage": usage,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None,
            "incomplete_details": None, "instructions": None, "metadata": {}, "temperature": None, "top_p": None}


@route("POST", r"/v1/responses|/responses")
def responses(fake: FakeLLM, handler: BaseHTTPRequestHandler, match, body: dict) -> None:
    turn = fake.next_turn(body)
    rid, output, usage = _next_id("resp"), _responses_output(turn), _responses_usage(turn)
    if not body.get("stream"):
        send_json(handler, 200, _response_object(rid, body, "completed", output, usage))
        return

    seq = itertools.count()
    frames: list[str] = []

    def emit(kind: str, **data) -> None:
        data = {"type": kind, "sequence_number": next(seq), **data}
        frames.append(f"event: {kind}\ndata: {json.dumps(data)}\n\n")

    emit("response.created", response=_response_object(rid, body, "in_progress", [], None))
    emit("response.in_progress", response=_response_object(rid, body, "in_progress", [], None))
    for index, item in enumerate(output):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "content": []})
            emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                 part={"type": "output_text", "text": "", "annotations": []})
            emit("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0, delta=text,
                 logprobs=[])
            emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=text,
                 logprobs=[])
            emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                 part=item["content"][0])
        else:
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "arguments": ""})
            emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                 delta=item["arguments"])
            emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                 arguments=item["arguments"])
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed", response=_response_object(rid, body, "completed", output, usage))
    send_sse_frames(handler, frames)


@route("GET", r"/v1/models|/models")
def list_models(fake: FakeLLM, handler: BaseHTTPRequestHandler, match, body: dict) -> None:
    send_json(handler, 200, {"object": "list", "data": [{"id": "gpt-4o", "object": "model", "type": "model"},
                                                        {"id": "claude-sonnet-4-6", "object": "model", "type": "model"}],
                             "has_more": False})
