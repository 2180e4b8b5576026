"""A loop's report, derived from its ledger (never hand-kept): the ledger printed, progress.png and summary.md.

progress.png: the gated score (validation, or dev where no validation tier exists) of every scored trial per
iteration, kept steps marked, the running best, and the held-out score of the kept steps as a second line.
Held-out is for people: this report is written into the run folder, outside the meta-agent's view.
"""

from __future__ import annotations

import json
from pathlib import Path

from autoembed import textsafe
from autoembed.loop.ledger import TSV_COLUMNS, Ledger, to_tsv
from autoembed.loop.spend import spot_trial_cost
from autoembed.records import read_json, read_jsonl

SCORED = ("keep", "discard", "inconclusive")


def report(run_dir: str | Path, out=print) -> dict:
    run_dir = Path(run_dir)
    out = _escaped(out)
    if not (run_dir / "ledger.jsonl").is_file() and not (run_dir / "intents.jsonl").is_file():  # intents: no row yet
        raise FileNotFoundError(f"no ledger.jsonl in {run_dir}: give a loop run folder (traces/loops/<run-id>)")
    ledger = Ledger(run_dir)
    rows = ledger.rows()
    heldout = {h["row_id"]: h for h in ledger.heldout()}
    out(to_tsv(rows, TSV_COLUMNS).rstrip("\n"))
    summary = summarize(rows, heldout)
    summary["screening"] = screening(rows, read_json(run_dir / "config.json", {}))
    summary["llm"] = llm_usage(run_dir, rows)
    summary["cost_usd"] += (summary["llm"]["spot_checks"] or {}).get("cost_usd", 0.0)  # no ledger row holds them
    summary.update(story(run_dir, rows))
    for line in llm_lines(summary["llm"]) + story_lines(summary) + (
            [screening_line(summary["screening"])] if summary["screening"] else []):
        out(line)
    (run_dir / "summary.md").write_text(markdown(summary, run_dir))
    if not summary["scored_trials"]:
        out(f"\nwrote {run_dir / 'summary.md'}; no progress.png: no trial of this loop was scored")
        return summary
    try:
        plot(rows, heldout, run_dir / "progress.png", main_metric(run_dir))
    except ImportError:  # a declared dependency, but a minimal GPU box may lack it: the records are what matter
        out(f"\nwrote {run_dir / 'summary.md'}; progress.png needs matplotlib (pip install matplotlib)")
    else:
        out(f"\nwrote {run_dir / 'progress.png'} and {run_dir / 'summary.md'}")
    return summary


def _escaped(out):
    """The ledger's descriptions and reasons are model-written: its control characters print as escapes, its
    line breaks stay (the TSV block is one text of many lines)."""
    return lambda text: out(textsafe.escape(text, keep_newlines=True))


def summarize(rows: list[dict], heldout: dict[str, dict]) -> dict:
    scored = [r for r in rows if r["status"] in SCORED]
    baseline = [r for r in scored if r["kind"] == "baseline"]
    kept = [r for r in rows if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
    best = kept[-1]["commit"] if kept else (baseline[0]["commit"] if baseline else None)
    best_runs = [r for r in scored if r["commit"] == best]

    def mean_of(rs, key):
        values = [r[key] for r in rs if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    def heldout_of(rs):
        values = [heldout[r["row_id"]]["heldout"]["mean"] for r in rs if (heldout.get(r["row_id"]) or {}).get("heldout")]
        return sum(values) / len(values) if values else None

    statuses: dict[str, int] = {}  # the candidates' rows: only these are gated, so only these are keeps
    incumbent_runs: dict[str, dict[str, int]] = {"baseline": {}, "remeasure": {}}  # A/A and re-measure rows
    for r in rows:
        if r["kind"] == "screen":  # short trials, never gated: summarized by screening()
            continue
        counts = incumbent_runs[r["kind"]] if r["kind"] in incumbent_runs else statuses
        status = "scored" if counts is not statuses and r["status"] in SCORED else r["status"]
        counts[status] = counts.get(status, 0) + 1
    trial_wall = sum(r.get("wall_s") or 0 for r in rows)
    return {
        "rows": len(rows), "candidates": len({r["candidate"] for r in rows if r.get("candidate")}),
        "trials": sum(1 for r in rows if r.get("trial_id")), "scored_trials": len(scored), "statuses": statuses,
        "incumbent_runs": incumbent_runs,
        "gate_split": sorted({r["gate_split"] for r in scored if r.get("gate_split")}),
        "baseline": {"commit": baseline[0]["commit"] if baseline else None, "runs": len(baseline),
                     "gated": mean_of(baseline, "gate_value"), "heldout": heldout_of(baseline)},
        "best": {"commit": best, "runs": len(best_runs), "gated": mean_of(best_runs, "gate_value"),
                 "heldout": heldout_of(best_runs), "description": kept[-1]["description"] if kept else "the baseline",
                 "diff": kept[-1].get("diff") if kept else None,
                 "ci": [kept[-1].get("ci_low"), kept[-1].get("ci_high")] if kept else None},
        "kept": [{"iteration": r["iteration"], "commit": r["commit"], "description": r["description"],
                  "diff": r.get("diff")} for r in kept],
        "trial_wall_s": trial_wall, "cost_usd": sum(r.get("cost_usd") or 0 for r in rows),
        "heldout_runs": len(heldout), "placement": placement_of(rows),
    }


def screening(rows: list[dict], config: dict) -> dict | None:
    """What screening cost and saved, in trial-hours (budgets, not walls): the screens' own, and the full trials that
    screened-out candidates did not run less every screen's cost (the promoted candidates' and the incumbent's too:
    without screening each candidate would have had one full trial)."""
    screens = [r for r in rows if r["kind"] == "screen"]
    if not screens:
        return None
    trial_hours = float((config or {}).get("trial_hours") or 0.0)
    share = float((config or {}).get("screen") or 0.0)
    out = sum(1 for r in screens if r["status"] == "screened_out")
    references = sum(1 for r in screens if r.get("candidate") is None)
    return {"screens": len(screens), "screen_hours": round(len(screens) * share * trial_hours, 6),
            "screened_out": out, "promoted": sum(1 for r in screens if r["status"] == "screened" and r.get("candidate")),
            "incumbent_screens": references,
            "saved_hours": round(out * trial_hours - len(screens) * share * trial_hours, 6)}


def screening_line(screens: dict) -> str:
    return (f"Screening: {screens['screens']} screens ({screens['incumbent_screens']} of the incumbent), "
            f"{screens['screen_hours']:.3f} trial-hours; {screens['screened_out']} candidates screened out, "
            f"{screens['promoted']} promoted to a full trial; trial-hours saved {screens['saved_hours']:+.3f}.")


def placement_of(rows: list[dict]) -> dict | None:
    """Trials per place and the trials retried after a place failed (the rows' place columns; --places only)."""
    placed = [r for r in rows if r.get("place")]
    if not placed:
        return None
    trials: dict[str, int] = {}
    for r in placed:
        trials[r["place"]] = trials.get(r["place"], 0) + 1
    retried = [{"trial_id": r["trial_id"], "failed_on": r.get("place_failed") or [], "ran_on": r["place"]}
               for r in placed if (r.get("place_attempts") or 1) > 1]
    return {"trials": trials, "retried": retried}


PHASE_WORDS = {"trials": "while trials ran", "record": "while recording trials", "propose": "while the meta-agent proposed",
               "commit": "while committing a candidate", "reparent": "while re-parenting a candidate",
               "smoke": "during a smoke check",
               "heldout": "while scoring a kept step's held-out"}


def story(run_dir: Path, rows: list[dict]) -> dict:
    """When and where the loop was cut short (intents.jsonl's session records), and what was never scored."""
    intents = read_jsonl(Path(run_dir) / "intents.jsonl")
    return {"interruptions": interruptions(intents, rows), "never_scored": never_scored(intents, rows)}


def interruptions(intents: list[dict], rows: list[dict]) -> list[dict]:
    """Each session that a stop record says was interrupted (Ctrl-C, SIGTERM, its grid's stop), and each that
    ended with no stop record (killed, or still running): its time, the phase, the trials it cut off."""
    by_trial = {r["trial_id"]: r for r in rows if r.get("trial_id")}

    def cut_off(trials: list[dict]) -> list[dict]:
        return [{k: t.get(k) for k in ("trial_id", "kind", "candidate")} for t in trials
                if (by_trial.get(t["trial_id"]) or {"interrupted": True}).get("interrupted")]

    out: list[dict] = []
    session = None
    for record in intents:
        if record.get("op") == "session":
            if session is not None and (record.get("event") == "start" or record.get("reason") == "interrupted"):
                trials = record["trials"] if "trials" in record else cut_off(session["trials"])
                killed = record.get("event") == "start"
                out.append({"time": (session["last"] if killed else record).get("time"),
                            "how": "killed" if killed else "interrupted",
                            "phase": "trials" if killed and trials else record.get("phase"), "trials": trials})
            session = {"last": record, "trials": []} if record.get("event") == "start" else None
        elif session is not None:
            session["last"] = record
            if record.get("op") == "trial":
                session["trials"].append(record)
    if session is not None:
        trials = cut_off(session["trials"])
        out.append({"time": session["last"].get("time"), "how": "killed", "phase": "trials" if trials else None,
                    "trials": trials})
    return out


def never_scored(intents: list[dict], rows: list[dict]) -> list[dict]:
    """The baseline when no A/A run of it was scored, and each candidate with no scored run that is not decided
    (its trial cut off by a stop, or never run); invalid, duplicate and crashed candidates are decided."""
    begun = [r for r in intents if r.get("op") == "trial"]
    recorded = {r["trial_id"] for r in rows if r.get("trial_id")}

    def entry(what: str, mine: list[dict], trials: list[str], extra: dict) -> dict:
        why = mine[-1]["reason"] if mine else "begun, not recorded yet: --resume records it" if trials else (
            "proposed, never run" if what.startswith("candidate") else "never run")
        return {"what": what, **extra, "trials": trials, "why": why}

    out = []
    baseline = [r for r in rows if r["kind"] == "baseline"]
    if not any(r["status"] in SCORED for r in baseline):
        trials = [r["trial_id"] for r in baseline if r.get("trial_id")]
        trials += [i["trial_id"] for i in begun if i.get("kind") == "baseline" and i["trial_id"] not in recorded]
        out.append(entry("the baseline", baseline, trials, {"commit": baseline[0]["commit"] if baseline else None}))
    for cand in (r for r in intents if r.get("op") == "candidate"):
        mine = [r for r in rows if r.get("candidate") == cand["id"]]
        if any(r["status"] in SCORED for r in mine) or (mine and not mine[-1].get("interrupted")):
            continue
        trials = [r["trial_id"] for r in mine if r.get("trial_id")]
        trials += [i["trial_id"] for i in begun if i.get("candidate") == cand["id"] and i["trial_id"] not in recorded]
        out.append(entry(f"candidate {cand['id']}", mine, trials,
                         {"commit": cand.get("commit"), "description": cand.get("description")}))
    return out


def where(cut: dict) -> str:
    trials = ", ".join(f"{t['trial_id']} ({t['kind']}{'' if t.get('candidate') is None else ' ' + str(t['candidate'])})"
                       for t in cut.get("trials") or [])
    place = f"during {trials}" if trials else PHASE_WORDS.get(cut.get("phase"), "between trials")
    if cut["how"] == "killed":
        return f"ended with no stop record (killed, or still running) after {cut['time']}, {place}"
    return f"was interrupted at {cut['time']}, {place}"


def story_lines(summary: dict) -> list[str]:
    lines = [f"the loop {where(cut)}" for cut in summary.get("interruptions") or []]
    for item in summary.get("never_scored") or []:
        trials = f" ({', '.join(item['trials'])})" if item["trials"] else ""
        lines.append(f"never scored: {item['what']}{trials}: {(item['why'] or '').splitlines()[0] if item['why'] else ''}")
    if not summary.get("scored_trials"):
        lines.append("no trial of this loop was scored: there is nothing to compare, and no best commit")
    return lines


def unscored_line(run_dir: Path, rows: list[dict]) -> str:
    """One line for a --resume of a loop with no scored trial."""
    cuts = story(run_dir, rows)["interruptions"]
    last = f"; it {where(cuts[-1])}" if cuts else ""
    return f"no trial of this loop has been scored yet{last}; it starts again with the baseline"


def llm_usage(run_dir: Path, rows: list[dict]) -> dict:
    """What the loop's LLMs used: the meta-agent's, by its gateway's log (every call, every session) when the
    loop ran one, else by the meta-agent's own count in the ledger; and the task model's over the trials."""
    from autoembed.loop.meta.gateway import usage_from_log

    meta = usage_from_log(Path(run_dir) / "meta" / "gateway")
    if meta is not None:
        meta["source"] = "the loop's LLM gateway (meta/gateway/gateway.jsonl)"
    elif any(r.get("meta_tokens") or r.get("meta_cost_usd") for r in rows):
        meta = {"source": "the meta-agent's own count (no gateway: a scripted model or --meta-base-url)",
                "tokens": sum(r.get("meta_tokens") or 0 for r in rows),
                "cost_usd": sum(r.get("meta_cost_usd") or 0.0 for r in rows)}
    trials = {"tokens": sum(r.get("tokens") or 0 for r in rows),
              "cost_usd": sum(r.get("trial_cost_usd") or 0.0 for r in rows)}
    return {"meta": meta, "trials": trials if trials["tokens"] or trials["cost_usd"] else None,
            "spot_checks": spot_check_usage(Path(run_dir))}


def spot_check_usage(run_dir: Path) -> dict | None:
    """The meta-agent's spot checks (short trials with no ledger row): how many, and their task model's dollars
    by each one's gateway, which --max-cost counts too."""
    spots = [r["id"] for r in read_jsonl(run_dir / "intents.jsonl") if r.get("op") == "spot"]
    if not spots:
        return None
    return {"count": len(spots), "cost_usd": sum(spot_trial_cost(run_dir / "spot" / s) for s in spots)}


def llm_lines(llm: dict) -> list[str]:
    lines = []
    meta, trials = llm.get("meta"), llm.get("trials")
    if meta is None:
        lines.append("meta-agent LLM: none (the search meta-agent calls no model)")
    elif "calls" in meta:
        models = ", ".join(f"{name} {m['calls']} calls ${m['cost_usd']:.4f}"
                           for name, m in sorted(meta["models"].items()))
        lines.append(f"meta-agent LLM: {meta['calls']} calls ({meta['failed_calls']} failed or refused), "
                     f"{meta['input_tokens']} input + {meta['output_tokens']} output tokens "
                     f"({meta['cache_read_tokens']} cache reads), ${meta['cost_usd']:.4f} estimated"
                     + (f" ({meta['unpriced_calls']} calls unpriced)" if meta["unpriced_calls"] else "")
                     + (f"; {models}" if models else "") + f"; by {meta['source']}")
    else:
        lines.append(f"meta-agent LLM: {meta['tokens']} tokens, ${meta['cost_usd']:.4f}; by {meta['source']}")
    spots = llm.get("spot_checks")
    if spots is not None:
        lines.append(f"task model in the meta-agent's {spots['count']} spot checks: ${spots['cost_usd']:.4f} "
                     "by their gateways")
    if trials is not None:
        lines.append(f"task model in the trials: {trials['tokens']} tokens, ${trials['cost_usd']:.4f} "
                     "(the trials' gateways)")
    return lines


def main_metric(run_dir: Path) -> str:
    """The metric the loop's scores are read by: its task's (config.json "task"), as the loop read them."""
    from autoembed.task.spec import load_spec

    config = read_json(Path(run_dir) / "config.json", {})
    try:
        return load_spec((config.get("task") if isinstance(config, dict) else None) or "embed").main_metric
    except (OSError, ValueError):  # the task's folder is gone or changed: the scores stand, the label is generic
        return "score"


def heldout_line(scored: list[dict], kept: list[dict], heldout: dict[str, dict]) -> list[tuple[int, float]]:
    """(iteration, held-out) of the baseline and of each kept step: the mean over all its commit's scored runs,
    as the summary's table gives it, not the one run that was kept."""
    steps = [r for r in scored if r["kind"] == "baseline"][:1] + kept
    points = []
    for step in steps:
        values = [heldout[r["row_id"]]["heldout"]["mean"] for r in scored
                  if r["commit"] == step["commit"] and (heldout.get(r["row_id"]) or {}).get("heldout")]
        if values:
            points.append((step["iteration"], sum(values) / len(values)))
    return points


def plot(rows: list[dict], heldout: dict[str, dict], path: Path, metric: str = "score") -> None:
    from matplotlib.figure import Figure  # not pyplot: switching the backend to Agg would end a notebook's inline plots

    scored = [r for r in rows if r["status"] in SCORED and r.get("gate_value") is not None]
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    if scored:
        split = scored[0].get("gate_split", "validation")
        xs = [r["iteration"] for r in scored]
        ax.scatter(xs, [r["gate_value"] for r in scored], s=18, color="0.6", label=f"{split} (every trial)", zorder=2)
        kept = [r for r in scored if r["status"] == "keep" and r["kind"] in ("candidate", "rerun")]
        ax.scatter([r["iteration"] for r in kept], [r["gate_value"] for r in kept], s=70, marker="*", color="tab:green",
                   label="kept", zorder=3)
        best_x, best_y, current = [], [], None
        incumbent_values: dict[str, list[float]] = {}
        for r in sorted(scored, key=lambda r: r["iteration"]):
            incumbent_values.setdefault(r["commit"], []).append(r["gate_value"])
            if r["kind"] == "baseline" and current is None or (r["status"] == "keep" and r["kind"] in ("candidate", "rerun")):
                current = r["commit"]
            if current is not None:
                best_x.append(r["iteration"])
                best_y.append(sum(incumbent_values[current]) / len(incumbent_values[current]))
        ax.step(best_x, best_y, where="post", color="tab:blue", label=f"running best ({split})")
        held = heldout_line(scored, kept, heldout)
        if held:
            ax.plot(*zip(*held), marker="o", color="tab:orange", label="held-out of kept steps")
    else:
        ax.text(0.5, 0.5, "no scored trial yet", transform=ax.transAxes, ha="center")
    ax.set_xlabel("iteration (candidate number; 0 = baseline)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(summary: dict, run_dir: Path) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    def counts(c):
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

    b, best = summary["baseline"], summary["best"]
    runs = summary.get("incumbent_runs") or {}
    lines = [f"# Loop report: {run_dir.name}", "",
             f"{summary['candidates']} candidates, {summary['trials']} trials; candidates' rows: "
             + counts(summary["statuses"]) + ". The incumbent's own runs (not gated): baseline A/A "
             + counts(runs.get("baseline") or {}) + "; re-measurements " + counts(runs.get("remeasure") or {}) + ".",
             f"Gated on: {', '.join(summary['gate_split']) or 'n/a'}. Trial wall time {summary['trial_wall_s'] / 60:.1f} min; "
             f"cost ${summary['cost_usd']:.2f}.",
             f"Held-out scored for {summary['heldout_runs']} runs: the baseline's and kept commits' (a discarded "
             "candidate's held-out is never scored; heldout.jsonl, outside the meta-agent's view).", "",
             "| | commit | runs | gated score | held-out |", "|---|---|---|---|---|",
             f"| baseline | {str(b['commit'])[:10]} | {b['runs']} | {fmt(b['gated'])} | {fmt(b['heldout'])} |",
             f"| best | {str(best['commit'])[:10]} | {best['runs']} | {fmt(best['gated'])} | {fmt(best['heldout'])} |", ""]
    if not summary.get("scored_trials"):
        lines[-5:-1] = ["**No trial of this loop was scored**: there is nothing to compare, no best commit and no plot."]
    story = story_lines({**summary, "scored_trials": 1})
    if story:
        lines += ["## Interruptions and what was never scored", ""] + [f"- {line}" for line in story] + [""]
    if best.get("diff") is not None:
        lo, hi = best["ci"]
        lines.append(f"Best over its incumbent when kept: {best['diff']:+.4f} (CI {lo:+.4f} .. {hi:+.4f}): {best['description']}")
    if summary.get("screening"):
        lines.append(screening_line(summary["screening"]))
    placement = summary.get("placement")
    if placement:
        lines.append("Placement: " + ", ".join(f"{n} trials on {place}" for place, n in sorted(placement["trials"].items()))
                     + f"; {len(placement['retried'])} retried after their place failed"
                     + "".join(f"; {r['trial_id']}: {', '.join(map(str, r['failed_on']))} failed, ran on {r['ran_on']}"
                               for r in placement["retried"]) + ".")
    lines += ["", "## LLM usage", ""] + [f"- {line}" for line in llm_lines(summary.get("llm") or {})]
    lines += ["", "## Kept steps", ""] + [f"- {k['iteration']}: `{k['commit'][:10]}` {k['description']} ({k['diff']:+.4f})"
                                          for k in summary["kept"]]
    lines += ["", "![progress](progress.png)" if summary.get("scored_trials") else "", "", "```json", json.dumps(summary, indent=2, default=str), "```", ""]
    return "\n".join(lines)
