"""What the gateway forwards with the real key: per provider, the (method, path) pairs of generation, streaming,
token counting and model listing. Everything else (batches, files, fine-tuning, organization and key admin, ...)
is refused before it leaves, whatever the method.

Paths are the tail after /<provider>/, i.e. relative to the base URL the provider's SDK is given: Anthropic's and
Gemini's base is the host (so their tails start with the API version), OpenAI's base already ends in /v1.
A segment is a plain name (letters, digits, . _ -, never a lone . or ..), so no tail can climb out of the route.
"""

from __future__ import annotations

import re

GENERATE, COUNT, LIST = "generate", "count", "list"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # starts with a letter or digit: "." and ".." cannot be a segment
_GEMINI_VERSION = r"v1(?:beta|alpha)?"

ALLOWED: dict[str, list[tuple[str, re.Pattern, str]]] = {
    "anthropic": [
        ("POST", re.compile(r"v1/messages"), GENERATE),  # streaming is the same path with "stream": true
        ("POST", re.compile(r"v1/messages/count_tokens"), COUNT),
        ("GET", re.compile(r"v1/models"), LIST),
        ("GET", re.compile(rf"v1/models/{_NAME}"), LIST),
    ],
    "openai": [
        ("POST", re.compile(r"chat/completions"), GENERATE),
        ("POST", re.compile(r"responses"), GENERATE),
        ("POST", re.compile(r"responses/input_tokens"), COUNT),
        ("GET", re.compile(r"models"), LIST),
        ("GET", re.compile(rf"models/{_NAME}"), LIST),
    ],
    "gemini": [
        ("POST", re.compile(rf"{_GEMINI_VERSION}/models/{_NAME}:(?:generateContent|streamGenerateContent)"), GENERATE),
        ("POST", re.compile(rf"{_GEMINI_VERSION}/models/{_NAME}:countTokens"), COUNT),
        ("GET", re.compile(rf"{_GEMINI_VERSION}/models"), LIST),
        ("GET", re.compile(rf"{_GEMINI_VERSION}/models/{_NAME}"), LIST),
    ],
}


def allowed(provider: str, method: str, tail: str) -> str | None:
    """GENERATE, COUNT or LIST for a request the gateway forwards, None for one it refuses."""
    for allowed_method, pattern, kind in ALLOWED.get(provider, []):
        if method == allowed_method and pattern.fullmatch(tail):
            return kind
    return None


def described(provider: str) -> str:
    """The allowed requests, for the refusal's message."""
    return ", ".join(f"{m} /{provider}/{p.pattern.replace(_NAME, '<name>').replace(_GEMINI_VERSION, 'v1beta')}"
                     for m, p, _ in ALLOWED.get(provider, []))
