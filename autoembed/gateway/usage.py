"""What a gateway's log says each model did: calls, tokens and dollars per model (meta.json's "models")."""

from __future__ import annotations

import json
from pathlib import Path


def models_used(log_path: Path) -> dict[str, dict]:
    """Every model that answered, from gateway.jsonl: {model: {"calls", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "usd"}}, usd None when any of its calls had no price."""
    models: dict[str, dict] = {}
    try:
        lines = Path(log_path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return models
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        usage = row.get("usage") if isinstance(row, dict) else None
        if not isinstance(usage, dict) or (row.get("status") or 0) >= 400 or row.get("refused"):
            continue
        entry = models.setdefault(str(row.get("model") or "unknown"), {
            "calls": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "usd": 0.0})
        entry["calls"] += 1
        for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            entry[key] += int(usage.get(key) or 0)
        cost = usage.get("cost_usd")
        entry["usd"] = None if cost is None or entry["usd"] is None else round(entry["usd"] + float(cost), 8)
    return models


def main_model(models: dict[str, dict]) -> str | None:
    """The model that answered most calls (the first named on a tie); None when none answered."""
    return max(models, key=lambda m: models[m]["calls"]) if models else None
