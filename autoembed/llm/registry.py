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


def parse_model(model: str) -> tuple[str, str]:
    if ":" not in model:
        raise LLMError(f"model {model!r} needs a provider prefix: one of {sorted(PROVIDERS)}, e.g. anthropic:{model}")
    provider, name = model.split(":", 1)
    if provider not in PROVIDERS:
        raise LLMError(f"unknown provider {provider!r} in {model!r}: use one of {sorted(PROVIDERS)}")
    return provider, name


def get_llm(model: str, **kwargs) -> LLM:
    provider, name = parse_model(model)
    module_name, cls_name = PROVIDERS[provider].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(name, **{**PROVIDER_OPTIONS.get(provider, {}), **kwargs})
