"""Provider-neutral messages, tools and responses: identical shapes for every provider.

A conversation is a list of Message:
  Message("user", text=...)
  Message("assistant", text=..., tool_calls=[ToolCall(...)])
  Message("tool", text=<output>, tool_call_id=..., name=<tool name>)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from autoembed.trace import Usage


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Message:
    role: str  # "user" | "assistant" | "tool"
    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    provider_state: Any = None  # opaque per-provider data to echo back (e.g. Gemini thought signatures)


@dataclass
class Response:
    text: str | None
    tool_calls: list[ToolCall]
    usage: Usage
    stop_reason: str | None = None
    model: str | None = None
    provider_state: Any = None


class LLMError(RuntimeError):
    """A failure that retrying cannot fix (bad key, bad request, context too long)."""


class LLM(abc.ABC):
    provider: str = "abstract"

    def __init__(self, model: str):
        self.model = model
        self.total_usage = Usage()

    @abc.abstractmethod
    def complete(self, messages: list[Message], *, system: str | None = None, tools: list[ToolSpec] | None = None,
                 max_tokens: int = 4096) -> Response:
        """One model call; retried on transient errors; usage is added to total_usage."""
