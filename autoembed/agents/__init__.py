"""Who acts: cli (claude, codex, gemini), harness (runs a harness file), recipe (no LLM)."""
