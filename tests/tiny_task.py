"""The tiny task (autoembed/integrity/tiny_task.py) shared by a test session, and a keyless environment for it."""

from __future__ import annotations

from pathlib import Path

from autoembed.integrity.tiny_task import make_tiny_task

__all__ = ["make_tiny_task", "shared_tiny_task", "keyless_tiny_task", "KEY_VARS"]


def shared_tiny_task(base: Path) -> Path:
    """make_tiny_task(base / "tiny_task") once per base folder (e.g. pytest's session basetemp)."""
    done = Path(base) / "tiny_task" / ".built"
    if not done.is_file():
        folder = make_tiny_task(Path(base) / "tiny_task")
        done.write_text(str(folder))
    return Path(done.read_text())


# Every variable that could hand a test's trial a real key or endpoint: a keyless test removes them all.
KEY_VARS = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
            "OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL", "GEMINI_API_KEY", "GOOGLE_API_KEY",
            "GOOGLE_GEMINI_BASE_URL")


def keyless_tiny_task(tmp_path_factory, monkeypatch) -> Path:
    """The session's tiny task, a harness-side home shared by the session (seed manifests, the cached base-model
    scores: only the first trial pays for them), offline, and no key or endpoint in the environment."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("AUTOEMBED_HOME", str(base / "autoembed_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    return shared_tiny_task(base)
