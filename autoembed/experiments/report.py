"""A comparison's report, derived from its records (the cells' ledger.jsonl and heldout.jsonl, the trials'
score.json), never hand-kept: report/report.md, report/report.json (every number in the markdown) and two
figures, improvement.png and leaderboard.png.

What a cell measures: the improvement of its loop's best harness (the last kept commit; the baseline when
nothing was kept) over the baseline harness, each the mean over its scored runs in that loop, on dev and on
held-out. The meta-agent was gated on validation (or dev); held-out is the honest measure of the improvement.

Same-model vs cross-model ("model empathy"): a pairing is same-family when its meta model and task model are of
one family (autoembed.models.family). Within each repeat r, d_r = mean improvement of the same-family cells - mean of the
cross-family cells. The test is an exact sign-flip permutation test of mean(d_r) = 0 over repeats, because:
the repeat is the independent unit (cells of one repeat share its seed and its day's noise, and pairing by repeat
removes that shared part); with the 3 to 10 repeats a budget allows a t-test's normality cannot be checked and a
mixed model's variance components cannot be estimated; and in a square grid with one same-family task model per
meta model, d_r cancels the meta models' and the task models' own main effects (a stronger meta model is not
empathy). The report says when the grid is not balanced that way. A t-interval of mean(d_r) goes beside it.
Power: the repeats a two-sided paired t-test (alpha 0.05, power 0.8) needs for a given effect, from the SD of d_r
measured here; the sign-flip test cannot reach p < 0.05 below 6 repeats at all (its smallest p is 2 / 2^n).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from autoembed import ladder
from autoembed.experiments.config import load_config
from autoembed.experiments.frames import main_metric
from autoembed.loop.ledger import Ledger
from autoembed.models import ModelRef, ModelRefError, family
from autoembed.records import write_json_atomic

SCORED = ("keep", "discard", "inconclusive")
SPLITS = ("dev", "heldout")
EFFECTS = (0.005, 0.01, 0.02)  # nDCG@10 differences the power table is computed for
ALPHA, POWER = 0.05, 0.8
EXACT_UP_TO = 16  # repeats for which the sign-flip test enumerates all 2^n sign vectors
RANDOM_FLIPS = 20000


# -- per cell -------------------------------------------------------------------------------------


def cell_measures(loop_dir: Path, task: str) -> dict:
    """baseline and best (mean over their scored runs) on dev and held-out, and best - baseline."""
    ledger = Ledger(loop_dir)
    rows = ledger.rows()
    heldout = {h["row_id"]: h for h in ledger.heldout()}
    scored = [r for r in rows if r["status"] in SCORED and r.get("trial_id")]
    baseline = next((r["commit"] for r in scored if r["kind"] == "baseline"), None)
    kept = [r for r in rows if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
    best = kept[-1]["commit"] if kept else baseline
    out = {"baseline_commit": baseline, "best_commit": best, "kept": len(kept), "trials": len(scored),
           "rows": len(rows), "cost_usd": sum(r.get("cost_usd") or 0.0 for r in rows)}

    def value(row, split):
        if split == "heldout":
            return ((heldout.get(row["row_id"]) or {}).get("heldout") or {}).get("mean")
        return (row.get(split) or {}).get("mean")

    for split in SPLITS:
        for name, commit in (("baseline", baseline), ("best", best)):
            values = [v for r in scored if r["commit"] == commit for v in [value(r, split)] if v is not None]
            out[f"{name}_{split}"] = float(np.mean(values)) if values else None
        b, a = out[f"baseline_{split}"], out[f"best_{split}"]
        out[f"improvement_{split}"] = None if a is None or b is None else a - b
    first = next((r for r in scored), None)
    score = json.loads((loop_dir / "trials" / first["trial_id"] / "score.json").read_text()) if first else {}
    norm = ladder.normalized(score, task) if score else {"key": None, "reason": "no scored trial"}
    found = ladder.ladders().get(norm["key"]) if norm.get("key") else None
    out["sets"] = norm.get("key")
    for split in SPLITS:
        span = (found["reference"][split] - found["base"][split]) if found and split in found["reference"] else None
        imp = out[f"improvement_{split}"]
        out[f"normalized_improvement_{split}"] = imp / span if imp is not None and span else None
    return out


# -- statistics -----------------------------------------------------------------------------------


def mean_ci(values: list[float]) -> dict:
    """Mean with a two-sided 95% t-interval over the values (repeats); no interval below 2 values."""
    from scipy import stats

    xs = [v for v in values if v is not None]
    out = {"n": len(xs), "mean": float(np.mean(xs)) if xs else None, "ci_low": None, "ci_high": None, "sd": None}
    if len(xs) >= 2:
        sd = float(np.std(xs, ddof=1))
        half = stats.t.ppf(0.975, len(xs) - 1) * sd / math.sqrt(len(xs))
        out.update(sd=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def sign_flip_p(diffs: list[float], seed: int = 0) -> float | None:
    """Two-sided p of mean(diffs) = 0 under random signs: exact up to EXACT_UP_TO values, else sampled."""
    xs = np.asarray([d for d in diffs if d is not None], dtype=float)
    if len(xs) == 0:
        return None
    observed = abs(xs.mean())
    if len(xs) <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(xs))))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(RANDOM_FLIPS, len(xs)))
    means = np.abs((signs * xs).mean(axis=1))
    return float(np.mean(means >= observed - 1e-12))


def repeats_needed(effect: float, sd: float | None, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The fewest repeats for which a two-sided one-sample t-test of the per-repeat contrast reaches the power."""
    from scipy import stats

    if sd is None or not sd > 0 or not effect > 0:
        return None
    for n in range(2, 10001):
        df = n - 1
        crit = stats.t.ppf(1 - alpha / 2, df)
        nc = effect / sd * math.sqrt(n)
        if stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= power:
            return n
    return None


# -- the whole comparison -------------------------------------------------------------------------


def summarize(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    task = Path(config.task).name if "/" in config.task else config.task
    cells = []
    for cell in config.cells():
        folder = run_dir / "cells" / cell["cell"]
        if not (folder / "done.json").is_file():
            continue
        cells.append({**cell, "same": family(cell["meta"]) == family(cell["task_model"]),
                      **cell_measures(folder, task)})
    pairings = []
    for meta in config.metas:
        for task_model in config.task_models:
            mine = [c for c in cells if c["meta"] == meta and c["task_model"] == task_model]
            entry = {"meta": meta, "task_model": task_model, "same": family(meta) == family(task_model), "repeats": len(mine)}
            for split in SPLITS:
                stats_ = mean_ci([c[f"improvement_{split}"] for c in mine])
                entry.update({f"improvement_{split}": stats_["mean"], f"{split}_ci_low": stats_["ci_low"],
                              f"{split}_ci_high": stats_["ci_high"]})
                norm = [c[f"normalized_improvement_{split}"] for c in mine if c[f"normalized_improvement_{split}"] is not None]
                entry[f"normalized_improvement_{split}"] = float(np.mean(norm)) if norm else None
            pairings.append(entry)
    sets = sorted({c["sets"] for c in cells if c.get("sets")})
    return {"config": {"metas": config.metas, "task_models": config.task_models, "repeats": config.repeats,
                       "hours": config.hours, "trial_hours": config.trial_hours, "task": config.task},
            "cells_total": len(config.cells()), "cells_done": len(cells), "cells": cells, "pairings": pairings,
            "empathy": empathy(cells, config), "leaderboard": leaderboard(run_dir, cells, task), "sets": sets}


def empathy(cells: list[dict], config) -> dict:
    """The same-family minus cross-family contrast per repeat, its test and interval, and the power table."""
    out: dict = {"test": "exact sign-flip permutation test over repeats of d_r = mean(same) - mean(cross)",
                 "balanced": balanced(config)}
    same_pairs = [(m, t) for m in config.metas for t in config.task_models if family(m) == family(t)]
    if not same_pairs or len(same_pairs) == len(config.metas) * len(config.task_models):
        out["words"] = ("no test: the grid has " + ("no same-family pairing" if not same_pairs else "only same-family pairings")
                        + f" (families: {sorted({family(x) for x in config.metas + config.task_models})})")
        return out
    for split in SPLITS:
        diffs = []
        for r in range(config.repeats):
            same = [c[f"improvement_{split}"] for c in cells if c["repeat"] == r and c["same"] and c[f"improvement_{split}"] is not None]
            cross = [c[f"improvement_{split}"] for c in cells if c["repeat"] == r and not c["same"] and c[f"improvement_{split}"] is not None]
            if same and cross:
                diffs.append(float(np.mean(same) - np.mean(cross)))
        stats_ = mean_ci(diffs)
        out[split] = {"per_repeat": diffs, **stats_, "p": sign_flip_p(diffs),
                      "smallest_possible_p": 2 / 2 ** len(diffs) if diffs else None,
                      "repeats_needed": {f"{e:g}": repeats_needed(e, stats_["sd"]) for e in EFFECTS}}
    h = out["heldout"]
    if h["n"] == 0:
        out["words"] = "no repeat has both a same-family and a cross-family cell done yet"
    else:
        ci = f" [{h['ci_low']:+.4f}, {h['ci_high']:+.4f}]" if h["ci_low"] is not None else " (no interval: 1 repeat)"
        out["words"] = (f"held-out: same-family pairings improved by {h['mean']:+.4f}{ci} more than cross-family ones, "
                        f"over {h['n']} repeat(s); sign-flip p = {h['p']:.3f}"
                        + (f" (the smallest p {h['n']} repeats can give is {h['smallest_possible_p']:.3f})"
                           if h["smallest_possible_p"] > ALPHA else ""))
        if not out["balanced"]:
            out["words"] += ("; the grid is not balanced (not every meta and task model is in as many same- as cross-"
                             "family cells), so the contrast also holds the models' own main effects")
    return out


def balanced(config) -> bool:
    """Square, with exactly one same-family task model per meta model and one meta model per task model."""
    metas, tasks = config.metas, config.task_models
    return (len(metas) == len(tasks)
            and all(sum(family(m) == family(t) for t in tasks) == 1 for m in metas)
            and all(sum(family(m) == family(t) for m in metas) == 1 for t in tasks))


def leaderboard(run_dir: Path, cells: list[dict], task: str) -> dict:
    """Single-agent trials: the comparison's agents/ and every cell's baseline-harness runs, by agent and model,
    with the reference ladder's base (0) and reference recipe (1) as anchors."""
    groups: dict[tuple, list[dict]] = {}
    for folder in sorted((run_dir / "agents").glob("*")) if (run_dir / "agents").is_dir() else []:
        if ".cut-off-" in folder.name or not (folder / "score.json").is_file():
            continue
        meta = json.loads((folder / "meta.json").read_text())
        groups.setdefault((meta.get("agent"), meta.get("model")), []).append(_trial_scores(folder, task))
    for cell in cells:
        folder = run_dir / "cells" / cell["cell"]
        for row in Ledger(folder).rows():
            if row["kind"] == "baseline" and row["status"] in SCORED and row.get("trial_id"):
                groups.setdefault(("harness (baseline)", cell["task_model"]), []).append(
                    _trial_scores(folder / "trials" / row["trial_id"], task))
    rows = []
    for (agent, model), trials in groups.items():
        entry = {"agent": agent, "model": model, "trials": len(trials)}
        for split in SPLITS:
            s = mean_ci([t[split] for t in trials])
            entry.update({split: s["mean"], f"{split}_ci_low": s["ci_low"], f"{split}_ci_high": s["ci_high"]})
            norm = [t[f"normalized_{split}"] for t in trials if t[f"normalized_{split}"] is not None]
            entry[f"normalized_{split}"] = float(np.mean(norm)) if norm else None
        rows.append(entry)
    rows.sort(key=lambda e: -(e["heldout"] if e["heldout"] is not None else -1))
    keys = sorted({t["sets"] for trials in groups.values() for t in trials if t["sets"]})
    anchors, note = [], None
    known = ladder.ladders()
    for key in keys:
        found = known.get(key)
        if found is None:
            note = ladder.missing_message(key)
            continue
        anchors += [{"agent": "anchor: base model", "sets": key, "normalized": 0.0,
                     **{s: found["base"].get(s) for s in SPLITS}},
                    {"agent": f"anchor: reference recipe ({found.get('reference_minutes')} min)", "sets": key,
                     "normalized": 1.0, **{s: found["reference"].get(s) for s in SPLITS}}]
    if len(keys) > 1:
        note = (note + "; " if note else "") + f"the trials scored different sets ({', '.join(keys)}): compare within one"
    return {"rows": rows, "anchors": anchors, "sets": keys, "note": note}


def _trial_scores(folder: Path, task: str) -> dict:
    score = json.loads((Path(folder) / "score.json").read_text())
    norm, metric = ladder.normalized(score, task), main_metric(folder)
    out = {"sets": norm["key"]}
    for split in SPLITS:
        out[split] = ((score.get(split) or {}).get("mean") or {}).get(metric)
        out[f"normalized_{split}"] = norm.get(split)
    return out


# -- writing it -----------------------------------------------------------------------------------


def write_report(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    summary = summarize(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", summary)
    figures = True
    try:  # Figure objects, not pyplot: a notebook's inline backend stays as it was
        from matplotlib.figure import Figure

        improvement_figure(summary, Figure(figsize=(max(6, 1.6 * len(summary["pairings"])), 4)).subplots()).savefig(
            out / "improvement.png", dpi=110)
        rows = len(summary["leaderboard"]["rows"])
        leaderboard_figure(summary, Figure(figsize=(7, 0.5 * rows + 1.5)).subplots()).savefig(out / "leaderboard.png", dpi=110)
    except ImportError:
        figures = False
    (out / "report.md").write_text(markdown(summary, run_dir.name, figures))
    return summary


def _f(value, signed: bool = True, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(lo, hi, signed: bool = True) -> str:
    return "n/a" if lo is None else f"[{_f(lo, signed)}, {_f(hi, signed)}]"


def label(model: str | None) -> str:
    """A model as the tables show it: a scripted file by its name, not its whole path."""
    try:
        script = ModelRef.parse(model).script
    except ModelRefError:  # search, None or a string no provider owns: shown as it is
        script = None
    return f"scripted:{script.name}" if script else str(model)


def markdown(s: dict, name: str, figures: bool = True) -> str:
    c = s["config"]
    lines = [f"# Comparison {name}", "",
             f"{len(c['metas'])} meta-agents x {len(c['task_models'])} task models x {c['repeats']} repeats; "
             f"{s['cells_done']} of {s['cells_total']} cells done. Each cell: a {c['hours']:g} h loop of "
             f"{c['trial_hours']:g} h trials on task {c['task']} ({', '.join(s['sets']) or 'no scored sets'}). "
             "Every number below is computed from the cells' ledgers and trial folders (report.json holds them all). "
             f"Spent: ${sum(cell['cost_usd'] for cell in s['cells']):.2f} (trials' task models and meta-agents, "
             "by the LLM gateways' counts).",
             "", "## Improvement of the best harness over the baseline harness, per pairing", "",
             "Mean over repeats with a 95% t-interval over repeats (none with 1 repeat); normalized: in units of the "
             "reference ladder's span (reference recipe - base model).", "",
             "| meta-agent | task model | same family | repeats | dev | dev 95% CI | held-out | held-out 95% CI | "
             "normalized held-out |", "|---|---|---|---|---|---|---|---|---|"]
    for p in s["pairings"]:
        lines.append(f"| {label(p['meta'])} | {label(p['task_model'])} | {'yes' if p['same'] else 'no'} | {p['repeats']} | "
                     f"{_f(p['improvement_dev'])} | {_ci(p['dev_ci_low'], p['dev_ci_high'])} | "
                     f"{_f(p['improvement_heldout'])} | {_ci(p['heldout_ci_low'], p['heldout_ci_high'])} | "
                     f"{_f(p['normalized_improvement_heldout'], digits=2)} |")
    if figures:
        lines += ["", "![improvement per pairing](improvement.png)"]
    e = s["empathy"]
    lines += ["", "## Same-family against cross-family pairings", "", e.get("words", ""), ""]
    if "heldout" in e:
        lines += ["| split | repeats | mean(same) - mean(cross) | 95% CI | sign-flip p | per repeat |", "|---|---|---|---|---|---|"]
        for split in SPLITS:
            d = e[split]
            lines.append(f"| {split} | {d['n']} | {_f(d['mean'])} | {_ci(d['ci_low'], d['ci_high'])} | "
                         f"{_f(d['p'], signed=False, digits=3)} | {', '.join(_f(x) for x in d['per_repeat'])} |")
        sd = e["heldout"]["sd"]
        lines += ["", f"Test: {e['test']}. Why: the repeat is the independent unit; with few repeats neither a "
                  "t-test's normality nor a mixed model's variance components can be checked; in a balanced square grid "
                  "the within-repeat contrast cancels the meta and task models' own main effects "
                  f"(this grid is {'balanced' if e['balanced'] else 'NOT balanced'}).", "",
                  "### Repeats needed", "",
                  f"A paired t-test (two-sided, alpha {ALPHA}, power {POWER}) on the per-repeat held-out contrast, whose SD "
                  f"here is {_f(sd, signed=False)}" + (" (not measurable below 2 repeats)" if sd is None else "") + ":", "",
                  "| effect (held-out nDCG@10) | repeats needed |", "|---|---|"]
        for effect, n in e["heldout"]["repeats_needed"].items():
            lines.append(f"| {effect} | {n if n is not None else 'n/a'} |")
        lines += ["", "The sign-flip test itself cannot give p < 0.05 with fewer than 6 repeats (its smallest p is 2/2^n)."]
    lb = s["leaderboard"]
    lines += ["", "## Leaderboard of single-agent trials", "",
              "Raw nDCG@10 (mean over trials, 95% t-interval) and the normalized score (base model 0, reference recipe 1). "
              "The harness baseline rows are every cell's A/A baseline runs of the unedited harness with that task model.", "",
              "| agent | model | trials | dev | held-out | held-out 95% CI | normalized dev | normalized held-out |",
              "|---|---|---|---|---|---|---|---|"]
    for a in lb["anchors"]:
        lines.append(f"| {a['agent']} | ({a['sets']}) | ladder | {_f(a.get('dev'), False)} | {_f(a.get('heldout'), False)} | "
                     f"| {a['normalized']:.2f} | {a['normalized']:.2f} |")
    for r in lb["rows"]:
        lines.append(f"| {label(r['agent'])} | {label(r['model'])} | {r['trials']} | {_f(r['dev'], False)} | "
                     f"{_f(r['heldout'], False)} | {_ci(r['heldout_ci_low'], r['heldout_ci_high'], False)} | {_f(r['normalized_dev'], digits=2)} | "
                     f"{_f(r['normalized_heldout'], digits=2)} |")
    if lb["note"]:
        lines += ["", f"Normalized scores: {lb['note']}."]
    if figures:
        lines += ["", "![leaderboard](leaderboard.png)"]
    lines += ["", "## Cells", "", "| cell | kept | trials | baseline held-out | best held-out | improvement dev | "
              "improvement held-out | cost |", "|---|---|---|---|---|---|---|---|"]
    for cell in s["cells"]:
        lines.append(f"| {cell['cell']} | {cell['kept']} | {cell['trials']} | {_f(cell['baseline_heldout'], False)} | "
                     f"{_f(cell['best_heldout'], False)} | {_f(cell['improvement_dev'])} | {_f(cell['improvement_heldout'])} | "
                     f"${cell['cost_usd']:.2f} |")
    return "\n".join(lines) + "\n"


def improvement_figure(s: dict, ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 1.6 * len(s["pairings"])), 4))
    pairings = s["pairings"]
    xs = np.arange(len(pairings))
    for offset, split, color in ((-0.2, "dev", "tab:blue"), (0.2, "heldout", "tab:orange")):
        means = [p[f"improvement_{split}"] if p[f"improvement_{split}"] is not None else np.nan for p in pairings]
        lo = [m - p[f"{split}_ci_low"] if p[f"{split}_ci_low"] is not None else 0 for m, p in zip(means, pairings)]
        hi = [p[f"{split}_ci_high"] - m if p[f"{split}_ci_high"] is not None else 0 for m, p in zip(means, pairings)]
        bars = ax.bar(xs + offset, means, width=0.4, color=color, yerr=[lo, hi], capsize=3, label=split)
        for bar, p in zip(bars, pairings):
            if p["same"]:
                bar.set_hatch("//")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(xs, [f"{label(p['meta'])}\n-> {label(p['task_model'])}" for p in pairings], fontsize=7)
    ax.set_ylabel("best - baseline harness, nDCG@10")
    ax.set_title("improvement per pairing (hatched: same family; bars: 95% CI over repeats)", fontsize=9)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def leaderboard_figure(s: dict, ax=None):
    import matplotlib.pyplot as plt

    rows = s["leaderboard"]["rows"]
    use_norm = any(r["normalized_heldout"] is not None for r in rows)
    key = "normalized_heldout" if use_norm else "heldout"
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    labels = [f"{label(r['agent'])} {label(r['model']) if r['model'] else ''}" for r in rows]
    ax.barh(range(len(rows)), [r[key] if r[key] is not None else np.nan for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    if use_norm:
        for x, name in ((0, "base model"), (1, "reference recipe")):
            ax.axvline(x, color="0.3", ls="--", lw=0.8)
            ax.text(x, len(rows) - 0.4, name, fontsize=7, ha="center")
    ax.set_xlabel("held-out, normalized (base 0, reference 1)" if use_norm else "held-out nDCG@10 (no ladder for these sets)")
    ax.invert_yaxis()
    ax.figure.tight_layout()
    return ax.figure
