"""One small interface over anthropic, openai and google-genai. See base.LLM and registry.get_llm."""
