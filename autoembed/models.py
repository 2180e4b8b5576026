"""Model names, parsed once: `provider:model` -> ModelRef, and the one table of providers (their names, the
host variables that hold their keys, the wire API their calls use through the gateway, their family).

    ModelRef.parse("anthropic:claude-sonnet-4-5")  -> ModelRef(provider="anthropic", model="claude-sonnet-4-5")
    ModelRef.parse("search")                        -> the offline knob search (a meta-agent, no model)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class ModelRefError(ValueError):
    """A model string that names no known provider; the message names the fix."""


@dataclass(frozen=True)
class Provider:
    name: str                       # the prefix of a model string
    wire: str | None                # the gateway's upstream and wire format: anthropic | openai | gemini (None: offline)
    family: str                     # same-model vs cross-model comparisons pair models of one family
    options: dict = field(default_factory=dict)  # passed to the in-process client (autoembed/llm/registry.py)


PROVIDERS = {p.name: p for p in (
    Provider("anthropic", "anthropic", "anthropic"),
    Provider("openai", "openai", "openai"),  # Chat Completions; also any OpenAI-compatible server
    Provider("openai-responses", "openai", "openai", {"api": "responses"}),  # the Responses API
    Provider("google", "gemini", "google"),
    Provider("scripted", None, "scripted"),
)}

# per wire: the host variables that may hold its credential (first found wins) and how each is sent upstream,
# the variable a client inside the sandbox reads its (per-trial) key from, and the base-URL variable it honours
WIRE_KEYS = {
    "anthropic": [("ANTHROPIC_API_KEY", "api_key"), ("ANTHROPIC_AUTH_TOKEN", "bearer"), ("CLAUDE_CODE_OAUTH_TOKEN", "oauth")],
    "openai": [("OPENAI_API_KEY", "api_key"), ("CODEX_API_KEY", "api_key")],
    "gemini": [("GEMINI_API_KEY", "api_key"), ("GOOGLE_API_KEY", "api_key")],
}
WIRE_CLIENT_KEY = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}
WIRE_BASE_URL = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL", "gemini": "GOOGLE_GEMINI_BASE_URL"}
WIRE_DEFAULT_BASE = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1",
                     "gemini": "https://generativelanguage.googleapis.com"}
SEARCH = "search"  # the offline knob search: a meta-agent with no model


@dataclass(frozen=True)
class ModelRef:
    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if not isinstance(text, str) or ":" not in text:
            raise ModelRefError(f"model {text!r} needs a provider prefix: one of {sorted(PROVIDERS)}, "
                                f"e.g. anthropic:{text}")
        provider, model = text.split(":", 1)
        if provider not in PROVIDERS:
            raise ModelRefError(f"unknown provider {provider!r} in {text!r}: use one of {sorted(PROVIDERS)}")
        if not model:
            raise ModelRefError(f"{text!r} names no model after {provider + ':'!r}: e.g. {provider}:<model id>")
        return cls(provider, model)

    @property
    def spec(self) -> Provider:
        return PROVIDERS[self.provider]

    @property
    def wire(self) -> str | None:
        return self.spec.wire

    @property
    def family(self) -> str:
        """anthropic, openai or google; a scripted file is its own family, named by its file name's first part
        (name the meta and task scripts alpha.meta.json and alpha.task.json to make them one family)."""
        if self.provider == "scripted":
            return "scripted:" + Path(self.model).name.split(".")[0]
        return self.spec.family

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def family(model: str) -> str:
    """The family of a model string; `search` is its own."""
    return SEARCH if model == SEARCH else ModelRef.parse(model).family
