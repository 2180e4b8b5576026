"""Model strings `provider:model` -> an LLM (the provider table is autoembed/models.py). Providers import lazily,
so a missing SDK only matters when used."""

from __future__ import annotations

import importlib

from autoembed.llm.base import LLM, LLMError
from autoembed.models import PROVIDERS, ModelRef, ModelRefError

CLIENTS = {  # provider -> the client class that speaks its API (imported on first use)
    "anthropic": "autoembed.llm.anthropic_llm:AnthropicLLM",
    "openai": "autoembed.llm.openai_llm:OpenAILLM",
    "openai-responses": "autoembed.llm.openai_llm:OpenAILLM",
    "google": "autoembed.llm.google_llm:GoogleLLM",
    "scripted": "autoembed.llm.scripted:ScriptedLLM",
}
assert set(CLIENTS) == set(PROVIDERS)


def parse_model(model: str) -> tuple[str, str]:
    try:
        ref = ModelRef.parse(model)
    except ModelRefError as exc:
        raise LLMError(str(exc)) from None
    return ref.provider, ref.model


def get_llm(model: str, **kwargs) -> LLM:
    provider, name = parse_model(model)
    module_name, cls_name = CLIENTS[provider].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(name, **{**PROVIDERS[provider].options, **kwargs})
