"""Model strings `provider:model` -> an LLM. Providers import lazily, so a missing SDK only matters when used."""

from __future__ import annotations

import importlib

from autoembed.llm.base import LLM, LLMError

PROVIDERS = {
    "anthropic": "autoembed.llm.anthropic_llm:AnthropicLLM",
    "openai": "autoembed.llm.openai_llm:OpenAILLM",  # Chat Completions; also any OpenAI-compatible server
    "openai-responses": "autoembed.llm.openai_llm:OpenAILLM",  # the Responses API
    "google": "autoembed.llm.google_llm:GoogleLLM",
    "scripted": "autoembed.llm.scripted:ScriptedLLM",
}
PROVIDER_OPTIONS = {"openai-responses": {"api": "responses"}}
# the variables naming each provider's key and endpoint (what the trial's gateway hands an agent)
ENDPOINT_ENV = {"anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"), "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
                "openai-responses": ("OPENAI_API_KEY", "OPENAI_BASE_URL"), "google": ("GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL")}


def parse_model(model: str) -> tuple[str, str]:
    if ":" not in model:
        raise LLMError(f"model {model!r} needs a provider prefix: one of {sorted(PROVIDERS)}, e.g. anthropic:{model}")
    provider, name = model.split(":", 1)
    if provider not in PROVIDERS:
        raise LLMError(f"unknown provider {provider!r} in {model!r}: use one of {sorted(PROVIDERS)}")
    return provider, name


def get_llm(model: str, env: dict[str, str] | None = None, **kwargs) -> LLM:
    """env: take the key and base URL from this mapping (a trial's TrialContext.env) instead of os.environ."""
    provider, name = parse_model(model)
    if env is not None and provider in ENDPOINT_ENV:
        key_var, url_var = ENDPOINT_ENV[provider]
        if not env.get(key_var):
            raise LLMError(f"this trial has no {provider} endpoint: set its API key on the host (the trial's "
                           f"gateway serves only providers it has a key or a base URL for)")
        kwargs = {"api_key": env[key_var], "base_url": env.get(url_var), **kwargs}
    module_name, cls_name = PROVIDERS[provider].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(name, **{**PROVIDER_OPTIONS.get(provider, {}), **kwargs})
