"""CLI agents (Claude Code, Codex, Gemini CLI) run inside the sandbox; see base.CliAgent."""
