"""The one small interface every meta-agent implements. A meta-agent proposes; the loop commits, smoke-checks,
runs, gates and records. It never imports autoembed.run or autoembed.sealed."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Proposal:
    source: str  # the whole target file as proposed
    description: str  # one line: the commit message
    handle: dict[str, Any] = field(default_factory=dict)  # the meta-agent's own bookkeeping (e.g. an optimizer trial)
    hypothesis: str = ""  # one line: what it expects this change to do, and why (the ledger row's "hypothesis")


@dataclass
class Feedback:
    """What the meta-agent is told about one of its candidates once it is decided."""

    iteration: int
    status: str  # keep | discard | invalid | crash | duplicate
    message: str  # the gate's reason, the smoke check's error, the crash's reason, or which candidate it duplicates
    value: float | None  # the gated score (validation, else dev) of the candidate, averaged over its runs
    handle: dict[str, Any] = field(default_factory=dict)
    hypothesis: str = ""  # what the candidate was meant to test, as recorded in its row


@dataclass
class ProposeContext:
    iteration: int
    incumbent_source: str  # the best file so far
    view_dir: Path  # the meta-agent's whole world: target repo, notes.md, ledger view, its trials' traces
    spot_check: Callable[[str], str] | None = None  # smoke-check a file's content now; returns a report
    device: str | None = None  # where trials run: "gpu" | "cpu", None when places mix both
    deadline: float | None = None  # epoch seconds: the loop's --hours ends then; a proposal must not go on past it
    trial_seconds: float | None = None  # one trial's wall-clock budget (--trial-hours)
    main_metric: str | None = None  # the task's goal metric, the one the gate decides on (e.g. "ndcg@10")


class MetaAgent(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def propose(self, ctx: ProposeContext) -> Proposal | None:
        """The next candidate, or None when it has nothing more to try."""

    def rebase(self, source: str, old_parent: str, new_parent: str) -> str | None:
        """The same proposal made on `new_parent` instead of `old_parent` (the incumbent changed after it was
        proposed), or None when it does not apply there. Default: a three-way merge of the edit onto the new file."""
        from autoembed.loop.meta.repo import three_way_merge

        return three_way_merge(source, old_parent, new_parent)

    def reparented(self, handle: dict[str, Any], source: str) -> None:
        """Told that its candidate (handle) was re-parented and will be measured as `source` (rebase's answer, now
        committed; rebase itself is also asked speculatively). Default: nothing to note."""

    def observe(self, feedback: Feedback) -> None:
        """Told the outcome of one of its candidates (it must tolerate hearing about one twice after a resume)."""

    @property
    def usage(self) -> dict:
        """Tokens and dollars spent so far by this meta-agent itself."""
        return {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
