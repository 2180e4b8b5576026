"""Imports every protocol module so their routes register. Each provider owns its own module."""

import importlib

for _name in ("anthropic", "openai", "gemini"):
    try:
        importlib.import_module(f"tests.fakellm.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"tests.fakellm.{_name}":
            raise
