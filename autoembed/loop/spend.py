"""What a trial spent, by its gateway's own count: read by the loop (its --max-cost) and by its report."""

from __future__ import annotations

import math
from pathlib import Path

from autoembed.records import read_json


def gateway_spend(meta: dict) -> tuple[float, int]:
    """A trial's dollars and tokens by its gateway's own count (meta.json "gateway"); 0 when it ran none. Usage an
    agent reports of itself (meta "usage" from its trace, when the gateway saw no call) is shown, never summed: a
    harness with no model calls could report any cost, -1000 included, to stop --max-cost later."""
    usage = ((meta.get("gateway") or {}) if isinstance(meta.get("gateway"), dict) else {}).get("usage") or {}
    if not isinstance(usage, dict):
        return 0.0, 0
    cost = usage.get("cost_usd")
    cost = float(cost) if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0 else 0.0
    tokens = sum(v for v in (usage.get("input_tokens"), usage.get("output_tokens")) if isinstance(v, int) and v > 0)
    return cost, tokens


def spot_trial_cost(spot_dir: Path) -> float:
    """A spot check's dollars by its gateway: its meta.json once the trial ended, else its gateway's log so far."""
    meta = read_json(Path(spot_dir) / "meta.json", {})
    if isinstance(meta.get("gateway"), dict):
        return gateway_spend(meta)[0]
    from autoembed.loop.meta.gateway import usage_from_log

    logged = usage_from_log(spot_dir) or {}
    cost = logged.get("cost_usd")
    return float(cost) if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0 else 0.0
