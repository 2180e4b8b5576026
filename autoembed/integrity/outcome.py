"""The audit's verdicts: one row per case, how it ended, whether that is the ending its kind requires, the table,
and the exit code.

An attack must end blocked (it could not happen) or detected (flagged in score.json or the ledger and scored as
the base model); a fault must end survived (a recorded state, nothing lost); bad input must be refused (exit 2,
one `error:` line, no traceback, nothing run); a clean agent or loop must end clean (no flag: no false
positives). Any other ending, or a case that could not be checked, fails the audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ATTACK, FAULT, BAD_INPUT, CLEAN = "attack", "fault", "bad input", "clean"
REQUIRED = {ATTACK: ("blocked", "detected"), FAULT: ("survived",), BAD_INPUT: ("refused",), CLEAN: ("clean",)}
# what each kind's failure is called in the table, so a failing row says what went wrong in one word
FAILED = {ATTACK: "NOT STOPPED", FAULT: "LOST", BAD_INPUT: "ACCEPTED", CLEAN: "FALSE POSITIVE"}
ERROR = "AUDIT ERROR"  # the case itself could not run or check: never a pass


@dataclass
class Row:
    case: str
    kind: str
    outcome: str
    reason: str
    seconds: float = 0.0
    evidence: dict = field(default_factory=dict)  # paths and values the verdict rests on (audit.json)

    def __post_init__(self):
        if self.kind not in REQUIRED:
            raise ValueError(f"unknown case kind {self.kind!r}: one of {sorted(REQUIRED)}")

    @property
    def ok(self) -> bool:
        return self.outcome in REQUIRED[self.kind]


def passed(kind: str, outcome: str) -> str:
    """The outcome as the table shows it: the word itself when it is what the kind requires, else the failure."""
    if outcome in REQUIRED[kind] or outcome == ERROR:
        return outcome
    return FAILED[kind]


def trial_verdict(meta: dict, score: dict | None, expected_codes: tuple[str, ...]) -> tuple[str, str]:
    """(outcome, reason) of an attack that ran as a trial and must be detected: score.json flags or breaks the
    submission for one of expected_codes (the finding codes the scorer writes before ':' in each reason) and
    scores it as the base model."""
    if score is None:
        return "not detected", f"no score.json (status {meta.get('status')}): {meta.get('score_error') or meta.get('reason')}"
    reasons = score.get("reasons") or []
    hits = [r for r in reasons if r.split(":", 1)[0] in expected_codes]
    frozen = meta.get("final_model") if isinstance(meta.get("final_model"), dict) else {}
    if "too_large" in expected_codes and frozen.get("too_large") and "not_frozen" in (r.split(":", 1)[0] for r in reasons):
        hits.append(frozen.get("error", "too_large"))  # refused by the freeze, before any byte was copied
    if score.get("status") in ("flagged", "broken") and score.get("scored_as") == "base_model" and hits:
        return "detected", f"score.json {score['status']}, scored as the base model: {hits[0]}"
    return "not detected", (f"score.json status {score.get('status')}, scored as {score.get('scored_as')}, "
                            f"reasons {reasons[:3]} (expected one of {list(expected_codes)})")


def clean_verdict(meta: dict, score: dict | None) -> tuple[str, str]:
    """A clean agent's trial: scored as its own final_model, no finding, the trial's result clean."""
    if score is None:
        return "not clean", f"no score.json (status {meta.get('status')})"
    if any(r.startswith("missing_final_model") for r in score.get("reasons") or []):  # the control never ran to the end
        return ERROR, f"the clean agent left no final_model ({meta.get('exit_reason')}): the control proves nothing"
    if score.get("status") != "ok" or score.get("scored_as") != "final_model" or score.get("reasons"):
        return "flagged", f"score.json {score.get('status')}: {score.get('reasons')}"
    if meta.get("result") != "clean":
        return "not clean", f"meta.json result {meta.get('result')}: {meta.get('problems')}"
    dev = (meta.get("scores") or {}).get("dev") or {}
    return "clean", (f"finished ({meta.get('exit_reason')}), scored as its own final_model, no finding; "
                     f"dev {dev.get('score')} vs base {dev.get('base')}")


def table(rows: list[Row]) -> str:
    """A Markdown table: case, kind, outcome (the failure's name where it failed), reason, seconds."""
    lines = ["| case | kind | outcome | reason | s |", "|---|---|---|---|---:|"]
    for row in rows:
        reason = " ".join(row.reason.split()).replace("|", "\\|")
        if len(reason) > 240:
            reason = reason[:237] + "..."
        lines.append(f"| {row.case} | {row.kind} | {passed(row.kind, row.outcome)} | {reason} | {row.seconds:.0f} |")
    return "\n".join(lines)


def tally(rows: list[Row]) -> str:
    failed = [r for r in rows if not r.ok]
    counts = {}
    for row in rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    parts = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    verdict = "PASS" if not failed and rows else "FAIL"
    return f"{verdict}: {len(rows)} cases ({parts}); {len(failed)} failed" + (
        f": {', '.join(r.case for r in failed)}" if failed else "")


def exit_code(rows: list[Row]) -> int:
    """0 when every case ended as its kind requires; 1 otherwise (and for an empty suite: nothing was shown)."""
    return 0 if rows and all(row.ok for row in rows) else 1
