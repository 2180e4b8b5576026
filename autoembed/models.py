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


@dataclass(frozen=True)
class KeyVar:
    name: str                       # the host variable
    sent_as: str                    # how the gateway sends it upstream: api_key | bearer | oauth
    harness: bool = True            # False: asked of the provider's own CLI agent only, never of a harness


# per wire: the host variables that may hold its credential, in the order a person is told to set them (the
# provider's own CLI reads every one of them)
KEYS = {
    "anthropic": (KeyVar("ANTHROPIC_API_KEY", "api_key"),
                  # a subscription's token (`claude setup-token`): Claude Code's own, not an SDK client's
                  KeyVar("CLAUDE_CODE_OAUTH_TOKEN", "oauth", harness=False),
                  KeyVar("ANTHROPIC_AUTH_TOKEN", "bearer")),
    # codex's own name for an OpenAI key: the gateway takes it, preflight asks a harness for OPENAI_API_KEY
    "openai": (KeyVar("OPENAI_API_KEY", "api_key"), KeyVar("CODEX_API_KEY", "api_key", harness=False)),
    "gemini": (KeyVar("GEMINI_API_KEY", "api_key"), KeyVar("GOOGLE_API_KEY", "api_key")),
}
SENT_AS_ORDER = ("api_key", "bearer", "oauth")  # where several are set, the gateway takes a key, a subscription's last
# the gateway's view, per wire: (variable, how it is sent upstream), first found wins
WIRE_KEYS = {wire: [(k.name, k.sent_as) for k in sorted(keys, key=lambda k: SENT_AS_ORDER.index(k.sent_as))]
             for wire, keys in KEYS.items()}
CLI_AGENTS = {"claude": "anthropic", "codex": "openai", "gemini": "google"}  # each CLI agent's provider
# the variable a client inside the sandbox reads its (per-trial) key from, and the base-URL variable it honours
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

    @property
    def script(self) -> Path | None:
        """A scripted model's script file (scripted:<path>); None for a provider's model."""
        return Path(self.model) if self.provider == "scripted" else None

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def family(model: str) -> str:
    """The family of a model string; `search` is its own."""
    return SEARCH if model == SEARCH else ModelRef.parse(model).family


def key_names(provider: str, *, cli: bool = False) -> tuple[str, ...]:
    """The host variables that may hold a provider's key, in the order a person is told to set them: all of them
    for the provider's own CLI agent (cli), those a harness is offered otherwise; none for a provider without a
    wire (scripted)."""
    return tuple(k.name for k in KEYS.get(PROVIDERS[provider].wire, ()) if cli or k.harness)


def key_from(env, names) -> str | None:
    """The value of the first of the variables names that env sets (non-empty); None if it sets none."""
    return next((env[name] for name in names if env.get(name)), None)


def model_id(text: str | None, provider: str) -> str | None:
    """What a provider's own CLI takes for its model: the id of `provider:<id>`; a bare id, another provider's
    string or None as given."""
    named, colon, rest = (text or "").partition(":")
    return rest if colon and named == provider else text
