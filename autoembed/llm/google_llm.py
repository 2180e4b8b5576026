"""Google Gemini models through the google-genai SDK (`google:gemini-2.5-pro`).

The SDK's own retries are off (one attempt per call); the shared tenacity policy in retry.py decides.
Keys: GEMINI_API_KEY, else GOOGLE_API_KEY. A custom endpoint: base_url= or GOOGLE_GEMINI_BASE_URL.

Gemini 3 models attach thought signatures to their function-call parts and expect them back on the
next request; the model's parts are kept verbatim in Response/Message.provider_state for that.
Gemini caches repeated prompt prefixes implicitly; cached tokens come back as cached_content_token_count.
"""

from __future__ import annotations

import importlib
import os
import uuid
from google import genai
from google.genai import errors, types

from autoembed.llm.base import LLM, LLMError, Message, Response, ToolCall, ToolSpec
from autoembed.llm.pricing import estimate_cost
from autoembed.llm.retry import MAX_ATTEMPTS, MAX_TOTAL_S, TransientError, parse_retry_after, retrying
from autoembed.trace import Usage

KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
SYNTHETIC_ID = "gcall_"  # ids we invent for calls the API sent without one; never sent back to it
TRANSIENT_STATUS = {408, 429}  # plus every 5xx (500, 503, 529 overloaded, ...)


def _http_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeouts, transport errors) of the HTTP client the SDK uses: httpx, or its fork httpx2."""
    modules = []
    for name in ("httpx", "httpx2"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    return tuple(m.TimeoutException for m in modules), tuple(m.TransportError for m in modules)


TIMEOUT_ERRORS, TRANSPORT_ERRORS = _http_errors()


class GoogleLLM(LLM):
    provider = "google"

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout: float = 600.0, max_attempts: int = MAX_ATTEMPTS, max_total_s: float = MAX_TOTAL_S):
        super().__init__(model)
        key = api_key or next((os.environ[v] for v in KEY_VARS if os.environ.get(v)), None)
        if not key:
            raise LLMError("no Google API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) to use google:* models")
        base_url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
        self.base_url, self.timeout = base_url, timeout
        self.max_attempts, self.max_total_s = max_attempts, max_total_s
        self.client = genai.Client(api_key=key, http_options=types.HttpOptions(
            base_url=base_url,
            timeout=int(timeout * 1000),  # the SDK counts milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # one policy: ours
        ))

    def complete(self, messages: list[Message], *, system: str | None = None, tools: list[ToolSpec] | None = None,
                 max_tokens: int = 4096) -> Response:
        config = types.GenerateContentConfig(
            system_instruction=system or None,
            max_output_tokens=max_tokens,
            tools=[types.Tool(function_declarations=[_declaration(t) for t in tools])] if tools else None,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        contents = to_contents(messages)
        for attempt in retrying(self.max_attempts, self.max_total_s):
            with attempt:
                raw = self._call(contents, config)
        response = from_response(raw, self.model)
        response.usage.cost_usd = estimate_cost(self.model, response.usage)
        self.total_usage = self.total_usage + response.usage
        return response

    def _call(self, contents: list[types.Content], config: types.GenerateContentConfig):
        try:
            return self.client.models.generate_content(model=self.model, contents=contents, config=config)
        except errors.APIError as exc:
            raise translate_api_error(exc) from exc
        except TIMEOUT_ERRORS as exc:
            raise TransientError(f"Gemini request timed out: {exc!r}") from exc
        except TRANSPORT_ERRORS as exc:  # refused, reset, server disconnected mid-response
            raise TransientError(f"Gemini connection failed: {exc!r}") from exc


# -- errors ----------------------------------------------------------------------------------------
def translate_api_error(exc: errors.APIError) -> Exception:
    code, message = exc.code or 0, exc.message or str(exc)
    if code in TRANSIENT_STATUS or code >= 500:
        return TransientError(f"Gemini API {code}: {message}", retry_after=_retry_after(exc))
    if code in (401, 403) or "API_KEY_INVALID" in str(exc.details) or "API key not valid" in message:
        return LLMError(f"Gemini API rejected the key ({code}: {message}): check GEMINI_API_KEY / GOOGLE_API_KEY")
    if code == 404:
        return LLMError(f"Gemini API 404 ({message}): is the model name right, and the base URL?")
    return LLMError(f"Gemini API {code}: {message}")


def _retry_after(exc: errors.APIError) -> float | None:
    """The retry-after header, else the RetryInfo detail Gemini puts in 429 bodies ("retryDelay": "7s")."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        value = parse_retry_after(headers.get("retry-after"))
        if value is not None:
            return value
    details = exc.details.get("error", {}).get("details", []) if isinstance(exc.details, dict) else []
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            return parse_retry_after(delay[:-1])
    return None


# -- conversation <-> Gemini contents --------------------------------------------------------------
def _declaration(spec: ToolSpec) -> types.FunctionDeclaration:
    return types.FunctionDeclaration(name=spec.name, description=spec.description,
                                     parameters_json_schema=spec.parameters)


def to_contents(messages: list[Message]) -> list[types.Content]:
    """Provider-neutral messages -> Gemini contents; consecutive same-role turns merge (tool results of
    parallel calls must arrive together in one user turn)."""
    contents: list[types.Content] = []
    for message in messages:
        role, parts = _parts(message)
        if not parts:
            continue
        if contents and contents[-1].role == role:
            contents[-1].parts.extend(parts)
        else:
            contents.append(types.Content(role=role, parts=parts))
    return contents


def _parts(message: Message) -> tuple[str, list[types.Part]]:
    if message.role == "user":
        return "user", [types.Part(text=message.text)] if message.text else []
    if message.role == "assistant":
        state = message.provider_state
        if isinstance(state, dict) and state.get("parts"):  # verbatim, thought signatures included
            return "model", [types.Part.model_validate(part) for part in state["parts"]]
        parts = [types.Part(text=message.text)] if message.text else []
        for call in message.tool_calls:
            parts.append(types.Part(function_call=types.FunctionCall(
                name=call.name, args=call.arguments, id=None if call.id.startswith(SYNTHETIC_ID) else call.id)))
        return "model", parts
    if message.role == "tool":
        if not message.name:
            raise LLMError("a tool message for Gemini needs name= (the tool's name): Gemini matches results by name")
        call_id = message.tool_call_id
        return "user", [types.Part(function_response=types.FunctionResponse(
            name=message.name, response={"output": message.text or ""},
            id=None if not call_id or call_id.startswith(SYNTHETIC_ID) else call_id))]
    raise LLMError(f"unknown message role {message.role!r}: use user, assistant or tool")


def from_response(raw: types.GenerateContentResponse, model: str) -> Response:
    candidate = raw.candidates[0] if raw.candidates else None
    parts = list(candidate.content.parts or []) if candidate and candidate.content else []
    texts = [p.text for p in parts if p.text and not p.thought]
    calls = [ToolCall(id=p.function_call.id or f"{SYNTHETIC_ID}{uuid.uuid4().hex[:12]}", name=p.function_call.name,
                      arguments=dict(p.function_call.args or {}))
             for p in parts if p.function_call]
    if candidate is not None and candidate.finish_reason is not None:
        reason = candidate.finish_reason
        stop = str(getattr(reason, "value", reason))
    elif raw.prompt_feedback is not None and raw.prompt_feedback.block_reason is not None:
        stop = f"blocked: {raw.prompt_feedback.block_reason}"
    else:
        stop = None
    state = {"parts": [p.model_dump(mode="json", exclude_none=True) for p in parts]} if parts else None
    return Response(text="".join(texts) or None, tool_calls=calls, usage=usage_of(raw.usage_metadata), stop_reason=stop,
                    model=raw.model_version or model, provider_state=state)


def usage_of(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage:
    """Gemini's prompt count includes cached tokens; thinking tokens are billed as output."""
    if meta is None:
        return Usage()
    cached = meta.cached_content_token_count or 0
    prompt = (meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0)
    return Usage(input_tokens=max(0, prompt - cached),
                 output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
                 cache_read_tokens=cached)
