"""Trial and loop folders reopened for a notebook: a readable HTML table as their repr, `.plot()` for a figure,
and their tidy frames (autoembed/experiments/frames.py). Everything is read from the folder, so a result reopened a week
later with load(path) shows what the run itself showed."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from autoembed import ladder
from autoembed.experiments import frames
from autoembed.trial.run import TrialResult

STATUS_COLORS = {"keep": "tab:green", "discard": "0.6", "inconclusive": "tab:olive", "crash": "tab:red",
                 "invalid": "tab:red", "duplicate": "0.8"}


class NotebookTrial(TrialResult):
    """What `autoembed.trial.run.run()` returns in a notebook: the trial's result, shown as its TrialView's table."""

    def _repr_html_(self) -> str:
        return TrialView(self.run_dir)._repr_html_()

    def plot(self, ax=None):
        return TrialView(self.run_dir).plot(ax)


class TrialView:
    """One trial folder (traces/<run-id>/)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.meta = frames._read_json(self.run_dir / "meta.json")
        self.score = frames._read_json(self.run_dir / "score.json") or None

    @property
    def df(self) -> pd.DataFrame:
        return frames.trials_df(self.run_dir)

    def table(self) -> pd.DataFrame:
        """One row per split: the score, the base model's, the change with its paired 95% CI, the normalized score."""
        row = frames.trial_row(self.run_dir)
        out = []
        for split in ladder.SPLITS:
            if row.get(split) is None:
                continue
            lo, hi = row.get(f"change_{split}_ci_low"), row.get(f"change_{split}_ci_high")
            out.append({"split": split, row["metric"]: row[split], "base": row.get(f"base_{split}"),
                        "change": row[split] - row[f"base_{split}"] if row.get(f"base_{split}") is not None else None,
                        "change 95% CI": f"[{lo:+.4f}, {hi:+.4f}]" if lo is not None else "n/a",
                        "normalized": row.get(f"normalized_{split}")})
        return pd.DataFrame(out).set_index("split") if out else pd.DataFrame()

    def _repr_html_(self) -> str:
        m = self.meta
        norm = ladder.normalized(self.score, m.get("task") or "embed") if self.score else {}
        head = (f"<b>trial {html.escape(self.run_dir.name)}</b>: agent {html.escape(str(m.get('agent')))}, "
                f"model {html.escape(str(m.get('model')))}, exit {html.escape(str(m.get('exit_reason')))}, "
                f"result {html.escape(str(m.get('result')))}, sets {html.escape(str(norm.get('key')))}")
        note = f"<br><i>normalized: {html.escape(norm['reason'])}</i>" if norm.get("reason") else ""
        table = self.table()
        body = table.to_html(float_format=lambda v: f"{v:.4f}", na_rep="–") if not table.empty else "<p>no score</p>"
        return f"<div>{head}{note}{body}<small>{html.escape(str(self.run_dir))}</small></div>"

    def __repr__(self) -> str:
        return f"TrialView({str(self.run_dir)!r})"

    def plot(self, ax=None):
        """Per split: the change from the base model (this trial minus the base, on the same queries) with its
        paired 95% CI, around a zero line; a green point is better than the base beyond noise, red worse."""
        import matplotlib.pyplot as plt

        row = frames.trial_row(self.run_dir)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        splits = [s for s in ladder.SPLITS if row.get(s) is not None and row.get(f"base_{s}") is not None]
        if not splits:
            ax.text(0.5, 0.5, "no score", transform=ax.transAxes, ha="center")
            return ax.figure
        ax.axhline(0.0, color="0.4", lw=1, label="base model")
        for x, split in enumerate(splits):
            change = row[split] - row[f"base_{split}"]
            lo, hi = row.get(f"change_{split}_ci_low"), row.get(f"change_{split}_ci_high")
            has_ci = lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi))
            color = "tab:green" if has_ci and lo > 0 else "tab:red" if has_ci and hi < 0 else "0.3"
            yerr = [[max(change - lo, 0.0)], [max(hi - change, 0.0)]] if has_ci else None
            ax.errorbar([x], [change], yerr=yerr, fmt="o", color=color, capsize=5)
            ax.annotate(f"{change:+.4f}" + (f"\n[{lo:+.4f}, {hi:+.4f}]" if has_ci else "\n(no CI)"), (x, change),
                        xytext=(8, 0), textcoords="offset points", fontsize=7, va="center")
        ax.set_xticks(range(len(splits)), splits)
        ax.set_xlim(-0.5, len(splits) - 0.3)
        ax.set_ylabel(f"change in {row['metric']} from the base")
        ax.set_title(f"trial {self.run_dir.name}: change from the base model, 95% CI", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.figure.tight_layout()
        return ax.figure


class LoopView:
    """One loop folder (traces/loops/<run-id>/)."""

    def __init__(self, run_dir: str | Path, exit_code: int | None = None):
        self.run_dir = Path(run_dir)
        self.exit_code = exit_code

    @property
    def ledger(self) -> pd.DataFrame:
        return frames.ledger_df(self.run_dir)

    @property
    def df(self) -> pd.DataFrame:
        return self.ledger

    @property
    def trials(self) -> pd.DataFrame:
        return frames.trials_df(self.run_dir)

    def summary(self) -> pd.DataFrame:
        """The baseline and the best kept commit: runs, gated (mean over runs), held-out, normalized."""
        rows = self.ledger
        out = []
        if rows.empty:
            return pd.DataFrame()
        scored = rows[rows["status"].isin(("keep", "discard", "inconclusive"))]
        kept = scored[(scored["status"] == "keep") & scored["kind"].isin(("candidate", "rerun"))]
        baseline = scored[scored["kind"] == "baseline"]
        best_commit = kept["commit"].iloc[-1] if not kept.empty else (baseline["commit"].iloc[0] if not baseline.empty else None)
        for name, commit in (("baseline", baseline["commit"].iloc[0] if not baseline.empty else None), ("best", best_commit)):
            runs = scored[scored["commit"] == commit] if commit else scored.iloc[0:0]
            out.append({"": name, "commit": (commit or "")[:10], "runs": len(runs),
                        "gated": runs["gate_value"].mean(), "dev": runs["dev"].mean(), "heldout": runs["heldout"].mean(),
                        "normalized dev": runs["normalized_dev"].astype(float).mean(),
                        "normalized heldout": runs["normalized_heldout"].astype(float).mean()})
        return pd.DataFrame(out).set_index("")

    def _repr_html_(self) -> str:
        rows = self.ledger
        counts = rows["status"].value_counts().to_dict() if not rows.empty else {}
        head = (f"<b>loop {html.escape(self.run_dir.name)}</b>: {len(rows)} ledger rows ("
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
        cols = [c for c in ("row_id", "kind", "candidate", "status", "gate_split", "gate_value", "diff", "ci_low",
                            "ci_high", "heldout", "normalized_heldout", "description") if c in rows.columns]
        summary = self.summary()
        return (f"<div>{head}{summary.to_html(float_format=lambda v: f'{v:.4f}', na_rep='–') if not summary.empty else ''}"
                f"{rows[cols].tail(12).to_html(index=False, float_format=lambda v: f'{v:.4f}', na_rep='–')}"
                f"<small>{html.escape(str(self.run_dir))}</small></div>")

    def __repr__(self) -> str:
        return f"LoopView({str(self.run_dir)!r})"

    def plot(self, ax=None):
        """The gated score of every trial by iteration (colored by the gate's decision), the running best,
        and the held-out score of the kept steps."""
        import matplotlib.pyplot as plt

        rows = self.ledger
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 4))
        scored = rows[rows["gate_value"].notna()] if "gate_value" in rows else rows.iloc[0:0]
        if scored.empty:
            ax.text(0.5, 0.5, "no scored trial yet", transform=ax.transAxes, ha="center")
            return ax.figure
        for status, group in scored.groupby("status"):
            ax.scatter(group["iteration"], group["gate_value"], s=22, color=STATUS_COLORS.get(status, "0.5"), label=status)
        best = scored[(scored["status"] == "keep")]
        ax.step(best["iteration"], best["gate_value"].cummax(), where="post", color="tab:blue", label="running best (kept)")
        held = best[best["heldout"].notna()]
        if not held.empty:
            ax.plot(held["iteration"], held["heldout"], marker="o", color="tab:orange", label="held-out of kept")
        ax.set_xlabel("iteration (0 = baseline)")
        ax.set_ylabel(f"nDCG@10 ({scored['gate_split'].iloc[0]})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.figure.tight_layout()
        return ax.figure
