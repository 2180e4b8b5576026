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
import json
import os
from pathlib import Path

STATUSES = ("keep", "discard", "inconclusive", "invalid", "crash", "duplicate")
# What a meta-agent may see of a row: dev and validation only, never held-out.
VIEW_COLUMNS = ("iteration", "kind", "commit", "parent", "status", "gate_split", "validation", "dev", "diff", "ci_low",
                "ci_high", "runs", "reason", "description")
TSV_COLUMNS = ("row_id", "iteration", "kind", "commit", "parent", "target", "meta", "task_model", "status", "gate_split",
               "validation", "dev", "diff", "ci_low", "ci_high", "runs", "incumbent_runs", "cost_usd", "tokens", "meta_tokens",
               "wall_s", "gpu_s", "gpu", "place", "reason", "description")


class Ledger:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "ledger.jsonl"
        self.tsv_path = self.run_dir / "results.tsv"
        self.heldout_path = self.run_dir / "heldout.jsonl"
        for path in (self.path, self.heldout_path):
            _drop_partial_last_line(path)

    def rows(self) -> list[dict]:
        return _read_jsonl(self.path)

    def has(self, row_id: str) -> bool:
        return any(r["row_id"] == row_id for r in self.rows())

    def append(self, row: dict, heldout: dict | None = None) -> bool:
        """Add a row (and its held-out scores, to the separate file) unless one with its row_id exists."""
        if row.get("status") not in STATUSES:
            raise ValueError(f"ledger status must be one of {STATUSES}, got {row.get('status')!r}")
        if self.has(row["row_id"]):
            return False
        self.add_heldout(row["row_id"], row.get("commit"), heldout)
        _append_jsonl(self.path, row)
        self.write_tsv()
        return True

    def add_heldout(self, row_id: str, commit: str | None, heldout: dict | None) -> bool:
        """Held-out scores for a row written earlier (the loop scores them only for kept commits), once per row."""
        if heldout is None or any(h["row_id"] == row_id for h in self.heldout()):
            return False
        _append_jsonl(self.heldout_path, {"row_id": row_id, "commit": commit, **heldout})
        return True

    def heldout(self) -> list[dict]:
        return _read_jsonl(self.heldout_path)

    def write_tsv(self) -> None:
        tmp = self.tsv_path.with_suffix(".tmp")
        tmp.write_text(to_tsv(self.rows(), TSV_COLUMNS))
        tmp.replace(self.tsv_path)

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


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): not a loop's records; "
                         "give the run folder a loop wrote (traces/loops/<run-id>)") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:  # one line naming the file, not a bare decoder message
            raise ValueError(f"{path} line {number} is not a JSON record ({exc.msg}): the file is damaged or not a "
                             "loop's; give the run folder a loop wrote (traces/loops/<run-id>)") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number} is not a JSON object: give the run folder a loop wrote "
                             "(traces/loops/<run-id>)")
        rows.append(row)
    return rows


def _drop_partial_last_line(path: Path) -> None:
    """A kill mid-write can leave a last line without its newline: it was never committed, so drop it."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
