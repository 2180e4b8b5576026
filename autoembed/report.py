"""A loop's report, derived from its ledger (never hand-kept): the ledger printed, progress.png and summary.md.

progress.png: the gated score (validation, or dev where no validation tier exists) of every scored trial per
iteration, kept steps marked, the running best, and the held-out score of the kept steps as a second line.
Held-out is for people: this report is written into the run folder, outside the meta-agent's view.
"""

from __future__ import annotations

import json
from pathlib import Path

from autoembed import textsafe
from autoembed.ledger import TSV_COLUMNS, Ledger, to_tsv

SCORED = ("keep", "discard", "inconclusive")


def report(run_dir: str | Path, out=print) -> dict:
    run_dir = Path(run_dir)
    out = _escaped(out)
    if not (run_dir / "ledger.jsonl").is_file():
        raise FileNotFoundError(f"no ledger.jsonl in {run_dir}: give a loop run folder (traces/loops/<run-id>)")
    ledger = Ledger(run_dir)
    rows = ledger.rows()
    heldout = {h["row_id"]: h for h in ledger.heldout()}
    out(to_tsv(rows, TSV_COLUMNS).rstrip("\n"))
    summary = summarize(rows, heldout)
    summary["llm"] = llm_usage(run_dir, rows)
    summary["cost_usd"] += (summary["llm"]["spot_checks"] or {}).get("cost_usd", 0.0)  # no ledger row holds them
    for line in llm_lines(summary["llm"]):
        out(line)
    (run_dir / "summary.md").write_text(markdown(summary, run_dir))
    try:
        plot(rows, heldout, run_dir / "progress.png")
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

    statuses = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    trial_wall = sum(r.get("wall_s") or 0 for r in rows)
    return {
        "rows": len(rows), "candidates": len({r["candidate"] for r in rows if r.get("candidate")}),
        "trials": sum(1 for r in rows if r.get("trial_id")), "statuses": statuses,
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


def llm_usage(run_dir: Path, rows: list[dict]) -> dict:
    """What the loop's LLMs used: the meta-agent's, by its gateway's log (every call, every session) when the
    loop ran one, else by the meta-agent's own count in the ledger; and the task model's over the trials."""
    from autoembed.meta.gateway import usage_from_log

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
    from autoembed.loop import spot_trial_cost
    from autoembed.ledger import _read_jsonl

    spots = [r["id"] for r in _read_jsonl(run_dir / "intents.jsonl") if r.get("op") == "spot"]
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


def plot(rows: list[dict], heldout: dict[str, dict], path: Path) -> None:
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
        steps = [r for r in scored if r["kind"] == "baseline"][:1] + kept
        held = [(r["iteration"], heldout[r["row_id"]]["heldout"]["mean"]) for r in steps
                if (heldout.get(r["row_id"]) or {}).get("heldout")]
        if held:
            ax.plot(*zip(*held), marker="o", color="tab:orange", label="held-out of kept steps")
    else:
        ax.text(0.5, 0.5, "no scored trial yet", transform=ax.transAxes, ha="center")
    ax.set_xlabel("iteration (candidate number; 0 = baseline)")
    ax.set_ylabel("nDCG@10")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(summary: dict, run_dir: Path) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    b, best = summary["baseline"], summary["best"]
    lines = [f"# Loop report: {run_dir.name}", "",
             f"{summary['candidates']} candidates, {summary['trials']} trials; statuses: "
             + ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items())) + ".",
             f"Gated on: {', '.join(summary['gate_split']) or 'n/a'}. Trial wall time {summary['trial_wall_s'] / 60:.1f} min; "
             f"cost ${summary['cost_usd']:.2f}.",
             f"Held-out scored for {summary['heldout_runs']} runs: the baseline's and kept commits' (a discarded "
             "candidate's held-out is never scored; heldout.jsonl, outside the meta-agent's view).", "",
             "| | commit | runs | gated score | held-out |", "|---|---|---|---|---|",
             f"| baseline | {str(b['commit'])[:10]} | {b['runs']} | {fmt(b['gated'])} | {fmt(b['heldout'])} |",
             f"| best | {str(best['commit'])[:10]} | {best['runs']} | {fmt(best['gated'])} | {fmt(best['heldout'])} |", ""]
    if best.get("diff") is not None:
        lo, hi = best["ci"]
        lines.append(f"Best over its incumbent when kept: {best['diff']:+.4f} (CI {lo:+.4f} .. {hi:+.4f}): {best['description']}")
    placement = summary.get("placement")
    if placement:
        lines.append("Placement: " + ", ".join(f"{n} trials on {place}" for place, n in sorted(placement["trials"].items()))
                     + f"; {len(placement['retried'])} retried after their place failed"
                     + "".join(f"; {r['trial_id']}: {', '.join(map(str, r['failed_on']))} failed, ran on {r['ran_on']}"
                               for r in placement["retried"]) + ".")
    lines += ["", "## LLM usage", ""] + [f"- {line}" for line in llm_lines(summary.get("llm") or {})]
    lines += ["", "## Kept steps", ""] + [f"- {k['iteration']}: `{k['commit'][:10]}` {k['description']} ({k['diff']:+.4f})"
                                          for k in summary["kept"]]
    lines += ["", "![progress](progress.png)", "", "```json", json.dumps(summary, indent=2, default=str), "```", ""]
    return "\n".join(lines)
