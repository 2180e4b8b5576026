"""`--meta provider:model`: an LLM meta-agent (through autoembed.llm; point it at the loop's gateway with
base_url + token). Its tools act only on the view folder: the run's git repository of the target file
(repo/), notes.md (its memory across iterations), ledger.tsv (dev and validation columns only) and its own
trials' traces (trials/). It may edit only the target file, and only above the fixed-adapter banner.

Each iteration is a fresh conversation: program.md as the system prompt, then what happened to its last
candidates; notes.md carries what it wants to remember. Every request it sends is logged to requests.jsonl.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from autoembed import editable
from autoembed.llm.base import LLM, Message, ToolSpec
from autoembed.llm.registry import get_llm
from autoembed.meta.base import Feedback, MetaAgent, ProposeContext, Proposal
from autoembed.paths import REPO_ROOT

MAX_TURNS = 40
READ_LIMIT = 20_000
GREP_LIMIT = 200
BRIEF_FEEDBACK = 10  # outcomes of its candidates told in an iteration's first message
PROGRAM = REPO_ROOT / "program.md"


class ViewError(ValueError):
    pass


def make_llm(model: str, *, base_url: str | None = None, token: str | None = None) -> LLM:
    """The meta-agent's client: provider:model, optionally through a gateway at base_url with its token."""
    kwargs = {}
    if base_url:
        kwargs["base_url"] = base_url
    if token:
        kwargs["api_key"] = token
    return get_llm(model, **kwargs)


class LLMMetaAgent(MetaAgent):
    # it proposes while GPU trials run (minutes of LLM calls the GPU would otherwise wait for): it reads the ledger as
    # it stands, the running trial's outcome reaches it at its next proposal, and the loop merges its edit onto the
    # running candidate if that one is kept; its spot check is then the smoke check alone (the GPU is busy)
    pipelined = True

    def __init__(self, model: str, state_dir: Path, *, base_url: str | None = None, token: str | None = None,
                 llm: LLM | None = None, max_turns: int = MAX_TURNS):
        self.name = model
        self.llm = llm or make_llm(model, base_url=base_url, token=token)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.max_turns = max_turns
        self.pending: list[Feedback] = []

    @property
    def usage(self) -> dict:
        u = self.llm.total_usage
        return {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens, "cost_usd": u.cost_usd or 0.0}

    def observe(self, feedback: Feedback) -> None:
        self.pending.append(feedback)

    def propose(self, ctx: ProposeContext) -> Proposal | None:
        view = View(ctx.view_dir)
        tools, finished = self._tools(view, ctx)
        system = PROGRAM.read_text() if PROGRAM.is_file() else "Improve the target file."
        messages = [Message("user", text=self._brief(ctx, view))]
        self.pending = []
        for _ in range(self.max_turns):
            self._log(ctx.iteration, system, messages)
            response = self.llm.complete(messages, system=system, tools=[t.spec for t in tools.values()], max_tokens=8192)
            messages.append(Message("assistant", text=response.text, tool_calls=response.tool_calls,
                                    provider_state=response.provider_state))
            if not response.tool_calls:
                messages.append(Message("user", text="Keep going: make one change to the target file and call finish."))
                continue
            for call in response.tool_calls:
                tool = tools.get(call.name)
                try:
                    output = tool.run(**call.arguments) if tool else f"error: no tool {call.name!r}; tools: {sorted(tools)}"
                except (ViewError, editable.EditableError, TypeError, OSError, re.error) as exc:
                    output = f"error: {exc}"
                messages.append(Message("tool", text=output, tool_call_id=call.id, name=call.name))
            if finished:
                break
        source = view.target.read_text()
        description = finished[0] if finished else "(the meta-agent ran out of turns without calling finish)"
        return Proposal(source, description)

    def _brief(self, ctx: ProposeContext, view: View) -> str:
        lines = [f"Iteration {ctx.iteration}. The target file is {view.target_rel} (its git history holds every "
                 "candidate: refs/candidates/*). Read ledger.tsv, notes.md and the trials' traces under trials/, "
                 "make ONE general change to the target file above the banner, and call finish with a one-line "
                 "description."]
        if ctx.device:
            lines.append(f"Trials run on a {ctx.device.upper()}: knobs tagged for the other device do not act there.")
        if len(self.pending) > BRIEF_FEEDBACK:  # after a resume it hears about every decided candidate again
            lines.append(f"- ({len(self.pending) - BRIEF_FEEDBACK} earlier outcomes: see ledger.tsv)")
        for fb in self.pending[-BRIEF_FEEDBACK:]:
            score = "" if fb.value is None else f" (score {fb.value:.4f})"
            lines.append(f"- candidate {fb.iteration}: {fb.status}{score}: {fb.message}")
        return "\n".join(lines)

    def _tools(self, view: View, ctx: ProposeContext) -> tuple[dict[str, "_Tool"], list[str]]:
        finished: list[str] = []

        def finish(description: str) -> str:
            finished.append(description)
            return "finished: the loop will commit, smoke-check and try your change"

        def spot_check() -> str:
            if ctx.spot_check is None:
                return "spot checks are not available in this loop"
            return ctx.spot_check(view.target.read_text())

        obj = {"type": "object"}
        tools = [
            _Tool("list_files", "List files under a folder of the view (relative path).",
                  {**obj, "properties": {"path": {"type": "string"}}}, view.list_files),
            _Tool("read_file", "Read a text file of the view (relative path); offset in characters.",
                  {**obj, "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}}, "required": ["path"]},
                  view.read_file),
            _Tool("grep", "Search the view's files for a regular expression.",
                  {**obj, "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}}, "required": ["pattern"]},
                  view.grep),
            _Tool("edit_target", "Replace one exact occurrence of old with new in the target file (above the banner only).",
                  {**obj, "properties": {"old": {"type": "string"}, "new": {"type": "string"}}, "required": ["old", "new"]},
                  view.edit_target),
            _Tool("write_notes", "Replace notes.md, your memory across iterations.",
                  {**obj, "properties": {"text": {"type": "string"}}, "required": ["text"]}, view.write_notes),
            _Tool("spot_check", "Smoke-check the target file as it is now, then run it as a short trial (a quarter of "
                  "a trial's budget; not gated): its validation and dev scores, trace and log (spot/).", obj, spot_check),
            _Tool("finish", "End this iteration: the target file as it is now becomes the candidate.",
                  {**obj, "properties": {"description": {"type": "string"}}, "required": ["description"]}, finish),
        ]
        return {t.name: t for t in tools}, finished

    def _log(self, iteration: int, system: str, messages: list[Message]) -> None:
        record = {"time": time.time(), "iteration": iteration, "system": system,
                  "messages": [{"role": m.role, "text": m.text, "tool_calls": [vars(c) for c in m.tool_calls],
                                "name": m.name} for m in messages]}
        with open(self.state_dir / "requests.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


class _Tool:
    def __init__(self, name: str, description: str, parameters: dict, fn):
        self.name, self.spec, self.run = name, ToolSpec(name, description, parameters), fn


class View:
    """The meta-agent's folder; every path it gives is resolved inside it (symlinks included)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        repo = self.root / "repo"
        files = [p for p in repo.iterdir() if p.is_file()] if repo.is_dir() else []
        if len(files) != 1:
            raise ViewError(f"expected one target file in {repo}")
        self.target = files[0]
        self.target_rel = str(self.target.relative_to(self.root))

    def path(self, rel: str) -> Path:
        target = (self.root / (rel or ".")).resolve()
        if target != self.root and self.root not in target.parents:
            raise ViewError(f"{rel} is outside the view")
        return target

    def list_files(self, path: str = ".") -> str:
        base = self.path(path)
        if not base.is_dir():
            raise ViewError(f"{path} is not a folder")
        entries = sorted(p for p in base.rglob("*") if ".git" not in p.relative_to(self.root).parts[:2] or p.name == ".git")
        return "\n".join(str(p.relative_to(self.root)) + ("/" if p.is_dir() else "") for p in entries[:500])

    def read_file(self, path: str, offset: int = 0) -> str:
        target = self.path(path)
        if not target.is_file():
            raise ViewError(f"{path} is not a file")
        text = target.read_text(errors="replace")
        chunk = text[offset: offset + READ_LIMIT]
        more = len(text) - offset - len(chunk)
        return chunk + (f"\n… [{more} more characters: read again with offset={offset + len(chunk)}]" if more > 0 else "")

    def grep(self, pattern: str, path: str = ".") -> str:
        regex = re.compile(pattern)
        base = self.path(path)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file() and ".git" not in p.parts)
        hits = []
        for file in files:
            for lineno, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
                if regex.search(line):
                    hits.append(f"{file.relative_to(self.root)}:{lineno}: {line[:300]}")
                    if len(hits) >= GREP_LIMIT:
                        return "\n".join(hits) + "\n… [more matches cut]"
        return "\n".join(hits) or "no matches"

    def edit_target(self, old: str, new: str) -> str:
        source = self.target.read_text()
        if source.count(old) != 1:
            raise ViewError(f"old must occur exactly once in the target file; it occurs {source.count(old)} times")
        updated = source.replace(old, new)
        if editable.split(updated)[1] != editable.split(source)[1]:
            raise ViewError("that edit changes the fixed adapter below the banner; only the part above it may change")
        self.target.write_text(updated)
        return f"edited {self.target_rel}"

    def write_notes(self, text: str) -> str:
        (self.root / "notes.md").write_text(text)
        return "notes.md written"
