"""The normalized score: base model = 0, reference recipe = 1, read against a reference ladder measured on the
same sets. "0.8" reads as "80% of the way from the base model to the reference recipe" (AutoLab's reward =
score / reference, anchored at the base model because the base already scores well).

A ladder is keyed by what was scored, because the numbers differ: `<task>|full` (the full sets, the GPU
default) or `<task>|fast:<queries>x<docs>` (the fast subsets, the CPU default). The package ships the ladders
measured in bench/RESULTS.md (ladders.json); `autoembed reference` saves the ladder it measures under
$AUTOEMBED_HOME/ladders/, where it overrides the package's. Where no ladder of a trial's key exists, the
normalized score is None with a reason that says so: it is never borrowed from another key.

The trial's own base score (the scorer measures it on the same sets every time) is checked against the ladder's
base; a difference beyond BASE_TOLERANCE means the ladder was measured on other data, and is refused too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from autoembed.paths import PACKAGE_DIR, home

PACKAGE_LADDERS = PACKAGE_DIR / "ladders.json"
SPLITS = ("dev", "validation", "heldout")
BASE_TOLERANCE = 0.01  # the scorer's CPU encoders agree with the GPU path within 0.002; a data change moves more


def key(task: str, score: dict) -> str:
    """The ladder key of what a score.json measured."""
    mode = score.get("mode")
    if mode == "fast":
        sizes = score.get("sizes") or {}
        return f"{task}|fast:{sizes.get('fast_queries')}x{sizes.get('fast_docs')}"
    return f"{task}|{mode or 'unknown'}"


def user_dir() -> Path:
    return home() / "ladders"


def ladders() -> dict[str, dict]:
    """Every known ladder by key: the package's, overridden by the ones `autoembed reference` saved here."""
    found = dict(json.loads(PACKAGE_LADDERS.read_text())["ladders"])
    folder = user_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and all(data.get(part) for part in ("key", "metric", "base", "reference")):
            found[data["key"]] = data
    return found


def missing_message(ladder_key: str) -> str:
    task, _, sets = ladder_key.partition("|")
    how = "--full" if sets == "full" else "--fast" + (f" --fast-size {sets[5:].replace('x', ',')}" if sets.startswith("fast:") else "")
    return (f"no reference ladder for {ladder_key} on record (known: {', '.join(sorted(ladders())) or 'none'}); "
            f"measure one on this machine class with `autoembed reference --task {task} {how}`")


def normalize(value: float | None, base: float, reference: float) -> float | None:
    if value is None or not reference > base:
        return None
    return (value - base) / (reference - base)


def normalized(score: dict | None, task: str) -> dict:
    """{"key", "ladder" (its source) or None, "reason" (why a split has no value, or None), split: value}."""
    if not score:
        return {"key": None, "ladder": None, "reason": "no score"}
    ladder_key = key(task, score)
    ladder = ladders().get(ladder_key)
    out: dict = {"key": ladder_key, "ladder": ladder.get("source") if ladder else None, "reason": None}
    if ladder is None:
        out["reason"] = missing_message(ladder_key)
        return out
    reasons, metric = [], ladder["metric"]
    for split in SPLITS:
        raw = _mean(score, split, metric)
        base, ref = ladder["base"].get(split), ladder["reference"].get(split)
        if raw is None or base is None or ref is None:
            continue
        own_base = _mean(score.get("base") or {}, split, metric)
        if own_base is not None and abs(own_base - base) > BASE_TOLERANCE:
            reasons.append(f"{split}: this trial's base model scored {own_base:.4f}, the ladder's {base:.4f}: "
                           "the ladder was measured on other data")
            continue
        out[split] = normalize(raw, base, ref)
    out["reason"] = "; ".join(reasons) or None
    return out


def _mean(score: dict, split: str, metric: str) -> float | None:
    """A split's mean of the metric the ladder was measured in (task.toml's main_metric when it was made)."""
    value = ((score.get(split) or {}).get("mean") or {}).get(metric)
    return value if isinstance(value, (int, float)) and not math.isnan(value) else None


def save_from_reference(result: dict, folder: Path | None = None) -> Path | None:
    """The base and recipe rungs of an `autoembed reference` result as a ladder of its key (None without both)."""
    rungs = result.get("rungs") or {}
    if "base" not in rungs or "recipe" not in rungs:
        return None
    metric = result["main_metric"]  # `autoembed reference` records the task's main_metric
    score = ({"mode": "fast", "sizes": {"fast_queries": result.get("fast_queries"), "fast_docs": result.get("fast_docs")}}
             if result.get("fast") else {"mode": "full"})
    ladder_key = key(result["task"], score)

    def means(rung: str) -> dict:
        return {split: rungs[rung][split]["mean"][metric] for split in SPLITS if split in rungs[rung]}

    ladder = {"key": ladder_key, "source": f"autoembed reference, {result.get('created')}",
              "machine": (result.get("machine") or {}).get("device"), "reference_minutes": result.get("minutes"),
              "metric": metric, "base": means("base"), "reference": means("recipe")}
    folder = Path(folder) if folder else user_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (ladder_key.replace("|", "__").replace(":", "_") + ".json")
    path.write_text(json.dumps(ladder, indent=2))
    return path
