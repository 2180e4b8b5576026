"""A fake LLM server for tests only: scripted responses and injected faults, on 127.0.0.1."""

from tests.fakellm.server import Fault, FakeLLM, Turn  # noqa: F401
