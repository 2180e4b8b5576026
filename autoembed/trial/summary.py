"""What a trial achieved, in numbers and in words: the headline scores meta.json carries, the grep-able block
printed at the end of a run, and the exit status (0 clean, 1 ran but not clean).

A score alone misleads: a fast-subset number is not the README's full-set number, and a change of +0.003 against
an interval of +-0.03 is noise. So each split shows its change from the base model with a paired 95% interval
(the same queries for both models, from per_query.json.gz next to score.json) and says whether that change is
distinguishable from noise.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from autoembed import textsafe
from autoembed.task.spec import MAIN_METRIC

SPLITS = ("dev", "validation", "heldout")
PER_QUERY_FILE = "per_query.json.gz"


def headline(score: dict, per_query: dict | None, main_metric: str = MAIN_METRIC, bootstrap: int = 1000) -> dict:
    """{"sets", "status", "scored_as", "metric", split: {"score", "base", "change", "change_ci", "n_queries",
    "noise"}} for each split that was scored. change_ci is absent when the per-query scores are."""
    out = {"sets": sets_scored(score), "status": score.get("status"), "scored_as": score.get("scored_as"),
           "metric": main_metric, "deferred": list(score.get("deferred") or [])}
    for split in SPLITS:
        ours = score.get(split, {}).get("mean", {}).get(main_metric)
        base = score.get("base", {}).get(split, {}).get("mean", {}).get(main_metric)
        if ours is None or base is None:
            continue
        row = {"score": ours, "base": base, "change": ours - base}
        if score.get("scored_as") != "final_model":
            row["noise"] = "no change: scored as the base model"
        else:
            paired = paired_change(per_query, split, main_metric, bootstrap) if per_query else None
            if paired is not None:
                row.update(paired)
                row["noise"] = noise_words(*row["change_ci"])
            else:
                row["noise"] = "unknown: no per-query scores to pair"
        out[split] = row
    return out


def sets_scored(score: dict) -> str:
    if score.get("mode") == "fast":
        sizes = score.get("sizes") or {}
        return (f"fast subsets ({sizes.get('fast_queries')} queries x {sizes.get('fast_docs')} docs per task; "
                "not comparable with full-set numbers)")
    return "full sets"


def paired_change(per_query: dict, split: str, metric: str, bootstrap: int) -> dict | None:
    """The change of the mean over tasks with a paired bootstrap CI over the queries both models were scored on."""
    from autoembed.task.resample import paired_bootstrap

    ours = (per_query.get("submission") or {}).get(split)
    base = (per_query.get("base") or {}).get(split)
    if not ours or not base or set(ours) != set(base):
        return None
    a, b, n = {}, {}, 0
    for task in sorted(base):
        common = sorted(set(base[task]) & set(ours[task]))
        if not common:
            return None
        a[task] = [base[task][q] for q in common]
        b[task] = [ours[task][q] for q in common]
        n += len(common)
    result = paired_bootstrap(a, b, n_boot=bootstrap)
    return {"change": result["diff"], "change_ci": result["ci"], "n_queries": n}


def noise_words(lo: float, hi: float) -> str:
    if lo > 0:
        return "better than the base beyond noise (the 95% CI of the change is above 0)"
    if hi < 0:
        return "worse than the base beyond noise (the 95% CI of the change is below 0)"
    return "not distinguishable from noise (the 95% CI of the change includes 0)"


def load_per_query(folder: Path) -> dict | None:
    path = Path(folder) / PER_QUERY_FILE
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def problems(meta: dict, score: dict | None) -> list[str]:
    """Why a trial is not clean, one reason each; empty when it ran, finished in time and scored ok."""
    out = []
    reason = meta.get("exit_reason")
    if meta.get("status") == "failed_to_start":
        out.append(f"failed to start: {meta.get('reason')}")
    elif reason == "crashed":
        out.append(f"the agent crashed: {last_line(meta.get('exit_detail'))}")
    elif reason == "deadline":
        out.append("timed out: the agent was still running at its deadline and was stopped")
    elif reason == "interrupted":
        out.append("interrupted before the agent finished")
    elif reason not in ("finished", None):
        out.append(f"the agent ended with {reason}: {last_line(meta.get('exit_detail'))}")
    frozen = meta.get("final_model")
    if isinstance(frozen, dict) and frozen.get("error"):  # the freeze refused it (too large, a link): say why
        out.append(last_line(frozen["error"]))
    if meta.get("status") == "score_failed":
        out.append(f"scoring failed: {last_line(meta.get('score_error'))}")
    elif meta.get("status") == "interrupted_while_scoring":
        out.append("interrupted while scoring: no score")
    gateway = meta.get("gateway") or {}
    if gateway.get("over_cap"):  # the gateway's count: a call declared more than it reserved
        spent, cap = (gateway.get("usage") or {}).get("cost_usd") or 0.0, (gateway.get("limits") or {}).get("max_usd")
        out.append(f"spend passed its cap: ${spent:.4f} of ${cap}, by the gateway's count")
    if score is not None and score.get("status") != "ok":
        out.append(f"scored {score.get('status')} (counted as {score.get('scored_as')}): "
                   + "; ".join(score.get("reasons") or ["no reason given"]))
    return out


def exit_code(meta: dict, score: dict | None) -> int:
    return 0 if score is not None and not problems(meta, score) else 1


def last_line(text) -> str:
    lines = [line.strip() for line in str(text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no detail recorded"


def render(run_id: str, run_dir: Path, meta: dict, score: dict | None) -> str:
    """The grep-able block (one key: value per line) printed at the end of a run."""
    lines = ["---", f"run_id: {run_id}", f"agent: {meta.get('agent')}", f"exit_reason: {meta.get('exit_reason')}",
             f"sandbox: {(meta.get('sandbox') or {}).get('kind')}"]
    cost = cost_line(meta)
    if cost:
        lines.append(cost)
    if meta.get("limit_reached"):  # the gateway's cap that stopped the agent
        lines.append(f"limit_reached: {meta['limit_reached']}")
    if (meta.get("limits") or {}).get("hit"):  # the sandbox's memory / process / disk limits the agent ran into
        lines.append(f"limits_hit: {'; '.join(meta['limits']['hit'])}")
    scores = meta.get("scores")
    if score is not None and scores:
        lines += score_lines(scores)
        if meta.get("normalized"):
            lines.append(normalized_line(meta["normalized"]))
    issues = problems(meta, score)
    lines.append("result: clean" if score is not None and not issues else "result: NOT CLEAN")
    lines += [f"reason: {issue}" for issue in issues]
    lines.append(f"run_dir: {run_dir}")
    return "\n".join(textsafe.escape(line) for line in lines)  # reasons quote the agent: no control character prints


def cost_line(meta: dict) -> str | None:
    """`cost: $0.0123 (4 model calls: m 3, n 1)`, by the gateway's count; `cost: unpriced (model x)` where a model
    that answered has no price; None before the agent ended (no spend recorded yet)."""
    models = meta.get("models")
    if models is None and meta.get("spend_usd") is None:
        return None
    spent = float(meta.get("spend_usd") or 0.0)
    if models is None:  # a record from before meta.json named its models
        return f"cost: ${spent:.4f}"
    calls = sum(m.get("calls", 0) for m in models.values())
    by_model = ", ".join(f"{name} {m.get('calls', 0)}" for name, m in sorted(models.items(), key=lambda i: -i[1].get("calls", 0)))
    unpriced = sorted(name for name, m in models.items() if m.get("usd") is None)
    if unpriced:
        named = f"unpriced (model{'s' if len(unpriced) > 1 else ''} {', '.join(unpriced)})"
        priced = len(unpriced) < len(models)
        return f"cost: {'$' + format(spent, '.4f') + ' + ' if priced else ''}{named}; {calls} model calls: {by_model}"
    if not models:
        return f"cost: ${spent:.4f} (no model call answered)"
    return f"cost: ${spent:.4f} ({calls} model call{'s' if calls != 1 else ''}: {by_model})"


def normalized_line(normalized: dict) -> str:
    """`normalized: dev 0.81 ...` (base model 0, reference recipe 1) or why there is none."""
    values = [f"{split} {normalized[split]:.2f}" for split in SPLITS if normalized.get(split) is not None]
    if not values:
        return f"normalized: none: {normalized.get('reason')}"
    note = f"; {normalized['reason']}" if normalized.get("reason") else ""
    return f"normalized: {', '.join(values)} (base model 0, reference recipe 1; ladder {normalized['key']}{note})"


def score_lines(scores: dict) -> list[str]:
    """status, sets, and one line per split: score, base, change with its paired CI, and whether it is noise."""
    lines = [f"status: {scores['status']} (scored as {scores['scored_as']})", f"sets: {scores['sets']}"]
    metric = scores["metric"]
    for split in SPLITS:
        row = scores.get(split)
        if split in (scores.get("deferred") or []):
            lines.append(f"{split}_{metric}: not scored in the trial (deferred: the loop scores it only for the commits "
                         "it keeps, out of the meta-agent's sight)")
        if row is None:
            continue
        change = f"change {row['change']:+.4f}"
        if "change_ci" in row:
            lo, hi = row["change_ci"]
            change += f" [{lo:+.4f}, {hi:+.4f}] paired over {row['n_queries']} queries"
        lines.append(f"{split}_{metric}: {row['score']:.4f} (base {row['base']:.4f}; {change}): {row['noise']}")
    return lines
