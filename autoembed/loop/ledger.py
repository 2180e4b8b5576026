"""The loop's one record of what ran and how it scored: ledger.jsonl, one row per trial (and one per candidate
that spent no trial: invalid, duplicate), with results.tsv as a derived view.

Held-out scores are written to heldout.jsonl, a separate file: no view a meta-agent reads contains it. The loop
scores held-out only for the runs of the baseline and of kept commits (a row's "heldout" says which); a discarded
candidate's held-out is never scored.
Rows are appended with fsync and carry a unique row_id, so replaying a step after a crash cannot add a row
twice; a line cut short by kill -9 is dropped when the ledger is opened again.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from autoembed.records import append_jsonl, drop_partial_last_line, read_jsonl, write_text_atomic

STATUSES = ("keep", "discard", "inconclusive", "invalid", "crash", "duplicate", "screened", "screened_out")
# What a meta-agent may see of a row: dev and validation only, never held-out.
VIEW_COLUMNS = ("iteration", "kind", "commit", "parent", "status", "gate_split", "validation", "dev", "diff", "ci_low",
                "ci_high", "runs", "reason", "description", "hypothesis")
TSV_COLUMNS = ("row_id", "iteration", "kind", "commit", "parent", "target", "meta", "task_model", "status", "gate_split",
               "validation", "dev", "diff", "ci_low", "ci_high", "runs", "incumbent_runs", "cost_usd", "tokens", "meta_tokens",
               "wall_s", "gpu_s", "gpu", "place", "reason", "description", "hypothesis")


class Ledger:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "ledger.jsonl"
        self.tsv_path = self.run_dir / "results.tsv"
        self.heldout_path = self.run_dir / "heldout.jsonl"
        for path in (self.path, self.heldout_path):
            drop_partial_last_line(path)

    def rows(self) -> list[dict]:
        return read_jsonl(self.path)

    def has(self, row_id: str) -> bool:
        return any(r["row_id"] == row_id for r in self.rows())

    def append(self, row: dict, heldout: dict | None = None) -> bool:
        """Add a row (and its held-out scores, to the separate file) unless one with its row_id exists."""
        if row.get("status") not in STATUSES:
            raise ValueError(f"ledger status must be one of {STATUSES}, got {row.get('status')!r}")
        if self.has(row["row_id"]):
            return False
        self.add_heldout(row["row_id"], row.get("commit"), heldout)
        append_jsonl(self.path, row)
        self.write_tsv()
        return True

    def add_heldout(self, row_id: str, commit: str | None, heldout: dict | None) -> bool:
        """Held-out scores for a row written earlier (the loop scores them only for kept commits), once per row."""
        if heldout is None or any(h["row_id"] == row_id for h in self.heldout()):
            return False
        append_jsonl(self.heldout_path, {"row_id": row_id, "commit": commit, **heldout})
        return True

    def heldout(self) -> list[dict]:
        return read_jsonl(self.heldout_path)

    def write_tsv(self) -> None:
        write_text_atomic(self.tsv_path, to_tsv(self.rows(), TSV_COLUMNS))

    def view(self) -> str:
        """The ledger as a meta-agent sees it: dev and validation columns only."""
        return to_tsv(self.rows(), VIEW_COLUMNS)


def to_tsv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):  # a score: its mean
        value = value.get("mean")
        return "" if value is None else f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("\t", " ").replace("\n", " ")


