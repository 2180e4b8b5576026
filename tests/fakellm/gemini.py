"""Gemini API (generativelanguage v1beta) on the fake server. Test code only.

Routes:
  POST /v1beta/models/<model>:generateContent        JSON reply (the google-genai Python SDK)
  POST /v1beta/models/<model>:streamGenerateContent  SSE reply with ?alt=sse (what Gemini CLI uses)
  POST /v1beta/models/<model>:countTokens            a rough count
  GET  /v1beta/models[/<model>]                      a model listing, for clients that probe it
The Python SDK (3.x) calls /v1/... by default and the CLI /v1beta/...: the POST routes take both.

A scripted Turn becomes one model Content: a text part and/or functionCall parts. Each functionCall
part carries a thoughtSignature, as Gemini 3 models send, so a client can be checked for echoing it
back on the next request. promptTokenCount includes cachedContentTokenCount, as the real API reports.

Gemini CLI also makes side calls that are not turns of the conversation (the "next speaker" check,
the model router, ...): they ask for JSON output (responseMimeType application/json) and are answered
from their schema without consuming the script, so a script lists only the conversation's turns.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.fakellm.server import FakeLLM, Turn, route, send_json, send_sse

MODELS = r"/v1(?:beta|alpha)?/models/(?P<model>[^/:]+)"
THOUGHT_SIGNATURE = "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ=="  # base64 of "fake-thought-signature"


def _parts(turn: Turn) -> list[dict]:
    parts: list[dict] = []
    if turn.text:
        parts.append({"text": turn.text})
    for name, args in turn.tool_calls:
        parts.append({"functionCall": {"name": name, "args": args}, "thoughtSignature": THOUGHT_SIGNATURE})
    return parts


def _usage(turn: Turn) -> dict:
    cached = getattr(turn, "cache_read_tokens", 0)
    usage = {"promptTokenCount": turn.input_tokens + cached, "candidatesTokenCount": turn.output_tokens,
             "totalTokenCount": turn.input_tokens + cached + turn.output_tokens}
    if cached:
        usage["cachedContentTokenCount"] = cached
    return usage


def _response(model: str, parts: list[dict], usage: dict | None, finish: bool) -> dict:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    payload: dict[str, Any] = {"candidates": [candidate], "modelVersion": model,
                               "responseId": uuid.uuid4().hex[:20]}
    if usage is not None:
        payload["usageMetadata"] = usage
    return payload


def _wants_json(body: dict) -> bool:
    config = body.get("generationConfig") or {}
    return config.get("responseMimeType") == "application/json" or "responseJsonSchema" in config \
        or "responseSchema" in config


def _fill(schema: dict | None) -> Any:
    """A minimal instance of a JSON schema; enough for the CLI's side calls to parse."""
    schema = schema or {}
    kind = str(schema.get("type", "object")).lower()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _fill(sub) for name, sub in props.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)  # e.g. the router's complexity_score must lie in 1..100
    if kind == "boolean":
        return False
    return "fake"


def _side_answer(body: dict) -> dict:
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema") or {}
    answer = _fill(schema)
    if isinstance(answer, dict) and "next_speaker" in answer:
        answer["next_speaker"] = "user"  # the model's turn is over: the CLI must not prompt "continue"
    if isinstance(answer, dict) and "model_choice" in answer:
        answer["model_choice"] = "flash"
    return answer


@route("POST", MODELS + r":generateContent")
def generate_content(fake: FakeLLM, handler, match, body: dict) -> None:
    model = match["model"]
    if _wants_json(body):
        send_json(handler, 200, _response(model, [{"text": json.dumps(_side_answer(body))}],
                                          {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8},
                                          True))
        return
    turn = fake.next_turn(body)
    send_json(handler, 200, _response(model, _parts(turn), _usage(turn), True))


@route("POST", MODELS + r":streamGenerateContent")
def stream_generate_content(fake: FakeLLM, handler, match, body: dict) -> None:
    model = match["model"]
    if _wants_json(body):
        send_sse(handler, [(None, _response(model, [{"text": json.dumps(_side_answer(body))}],
                                            {"promptTokenCount": 5, "candidatesTokenCount": 3,
                                             "totalTokenCount": 8}, True))])
        return
    turn = fake.next_turn(body)
    parts = _parts(turn)
    chunks: list[tuple[str | None, dict]] = []
    if turn.text and turn.tool_calls:  # text first, then the calls, as the real stream splits them
        chunks.append((None, _response(model, parts[:1], None, False)))
        parts = parts[1:]
    chunks.append((None, _response(model, parts, _usage(turn), True)))
    send_sse(handler, chunks)


@route("POST", MODELS + r":countTokens")
def count_tokens(fake: FakeLLM, handler, match, body: dict) -> None:
    send_json(handler, 200, {"totalTokens": max(1, len(json.dumps(body)) // 4)})


def _model_info(name: str) -> dict:
    return {"name": f"models/{name}", "displayName": name, "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"]}


@route("GET", r"/v1(?:beta|alpha)/models")  # not plain /v1/models: that is OpenAI's listing
def list_models(fake: FakeLLM, handler, match, body: dict) -> None:
    send_json(handler, 200, {"models": [_model_info("gemini-2.5-flash"), _model_info("gemini-2.5-pro")]})


@route("GET", r"/v1(?:beta|alpha)/models/(?P<model>[^/:]+)")
def get_model(fake: FakeLLM, handler, match, body: dict) -> None:
    send_json(handler, 200, _model_info(match["model"]))
