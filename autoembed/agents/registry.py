"""Agent names on the command line -> Agent objects. Imports are lazy: a CLI agent's module only matters when used."""

from __future__ import annotations

import importlib
from pathlib import Path

from autoembed.agents.base import Agent

AGENTS = {
    "recipe": "autoembed.agents.recipe:RecipeAgent",
    "claude": "autoembed.agents.cli.claude:ClaudeCodeAgent",
    "codex": "autoembed.agents.cli.codex:CodexAgent",
    "gemini": "autoembed.agents.cli.gemini:GeminiAgent",
}


def agent_kind(spec: str) -> str:
    """The kind an agent spec names: 'harness' for harness:<path>, 'claude' for claude."""
    return spec.partition(":")[0]


def spec_file(spec: str, kind: str) -> Path | None:
    """The file of an agent spec `<kind>:<path>` (harness:harnesses/baseline.py); None for a spec of another kind.
    An agent spec is not a model string (provider:model): what follows its colon is a path, parsed here."""
    named, colon, path = spec.partition(":")
    return Path(path) if colon and named == kind else None


def make_agent(spec: str, model: str | None = None) -> Agent:
    """'recipe' | 'recipe:<path to a recipe file>' | 'claude' | 'codex' | 'gemini' | 'harness:<path to harness file>'"""
    path = spec_file(spec, "harness")
    if path is not None:
        from autoembed.agents.harness import HarnessAgent

        if not path.is_file():
            raise ValueError(f"harness file {path} does not exist (expected e.g. harness:harnesses/baseline.py)")
        return HarnessAgent(path, model=model)
    path = spec_file(spec, "recipe")
    if path is not None:
        from autoembed.agents.recipe import RecipeAgent

        if not path.is_file():
            raise ValueError(f"recipe file {path} does not exist (expected e.g. recipe:harnesses/recipe.py)")
        return RecipeAgent(model=model, path=path)
    if spec not in AGENTS:
        raise ValueError(f"unknown agent {spec!r}: use one of {sorted(AGENTS)} or harness:<path>")
    module_name, cls_name = AGENTS[spec].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model=model) if model is not None else cls()
