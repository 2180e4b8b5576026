"""Estimated USD per million tokens (input, output, cache read, cache write). Estimates, not invoices."""

from __future__ import annotations

from autoembed.trace import Usage

# prefix match on the model name; the longest matching prefix wins
PRICES: dict[str, tuple[float, float, float, float]] = {
    "claude-opus-4": (15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4": (3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4": (1.0, 5.0, 0.1, 1.25),
    "gpt-5": (1.25, 10.0, 0.125, 1.25),
    "gpt-5-mini": (0.25, 2.0, 0.025, 0.25),
    "gpt-4.1": (2.0, 8.0, 0.5, 2.0),
    "gpt-4o": (2.5, 10.0, 1.25, 2.5),
    "o3": (2.0, 8.0, 0.5, 2.0),
    "gemini-2.5-pro": (1.25, 10.0, 0.31, 1.25),
    "gemini-2.5-flash": (0.3, 2.5, 0.075, 0.3),
    "gemini-3-pro": (2.0, 12.0, 0.2, 2.0),
}


def estimate_cost(model: str, usage: Usage) -> float | None:
    """None when the model is unknown (a local server, a new model): unknown is not free."""
    matches = [p for p in PRICES if model.startswith(p)]
    if not matches:
        return None
    price_in, price_out, price_read, price_write = PRICES[max(matches, key=len)]
    return (usage.input_tokens * price_in + usage.output_tokens * price_out
            + usage.cache_read_tokens * price_read + usage.cache_write_tokens * price_write) / 1e6
