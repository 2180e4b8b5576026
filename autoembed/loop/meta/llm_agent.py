"""`--meta provider:model`: an LLM meta-agent (through autoembed.llm; point it at the loop's gateway with
base_url + token). Its tools act only on the view folder: the run's git repository of the target file
(repo/), notes.md (its memory across iterations), ledger.tsv (dev and validation columns only), api.md (what the
target file may call) and its own trials' traces (trials/). It may edit only the target file, and only above the
fixed-adapter banner. Its finish records a hypothesis and a description, each one line (the loop cuts them).

Each iteration is a fresh conversation: program.md as the system prompt, then what happened to its last
candidates; notes.md carries what it wants to remember. Its conversation is logged to requests.jsonl, each turn's
new messages once (the log grows with the conversation, not with its square).

Its tools run on the host, so each is bounded: grep's regular expressions go through RE2 (linear time: no pattern
backtracks catastrophically) over a bounded number of bytes, reads are bounded, the target file and notes.md have
a size cap, and no turn starts past the loop's deadline (--hours).
"""

from __future__ import annotations

import time
from pathlib import Path

import re2

from autoembed import editable
from autoembed.llm.base import LLM, Message, ToolSpec
from autoembed.llm.registry import get_llm
from autoembed.loop.meta.base import Feedback, MetaAgent, ProposeContext, Proposal
from autoembed.paths import REPO_ROOT
from autoembed.records import append_jsonl

MAX_TURNS = 40
READ_LIMIT = 20_000
GREP_LIMIT = 200
GREP_BYTES = 32 * 1024 * 1024  # grep reads at most this much of the view per call, then says it stopped
GREP_LINE = 4096  # a line is read and searched in pieces of at most this many characters
NOTES_LIMIT = 64 * 1024
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
        log = _ConversationLog(self.state_dir / "requests.jsonl", ctx.iteration, system)
        for _ in range(self.max_turns):
            if _past(ctx.deadline):
                break
            log.write(messages)
            response = self.llm.complete(messages, system=system, tools=[t.spec for t in tools.values()], max_tokens=8192)
            messages.append(Message("assistant", text=response.text, tool_calls=response.tool_calls,
                                    provider_state=response.provider_state))
            if not response.tool_calls:
                messages.append(Message("user", text="Keep going: make one change to the target file and call finish."))
                continue
            for call in response.tool_calls:
                tool = tools.get(call.name)
                if _past(ctx.deadline):
                    output = "error: the loop's time (--hours) is up; this iteration ends now"
                else:
                    try:
                        output = tool.run(**call.arguments) if tool else f"error: no tool {call.name!r}; tools: {sorted(tools)}"
                    except Exception as exc:  # a tool's failure is the model's to read, never the loop's
                        output = f"error: {type(exc).__name__}: {exc}"
                messages.append(Message("tool", text=output, tool_call_id=call.id, name=call.name))
            if finished:
                break
        log.write(messages)
        if _past(ctx.deadline) and not finished:
            return None  # the loop's budget ended mid-proposal: nothing to try
        source = view.target.read_text(errors="surrogateescape")
        if finished:
            description, hypothesis = finished[0]
        else:
            description, hypothesis = "(the meta-agent ran out of turns without calling finish)", ""
        return Proposal(source, description, hypothesis=hypothesis)

    def _brief(self, ctx: ProposeContext, view: View) -> str:
        lines = [f"Iteration {ctx.iteration}. The target file is {view.target_rel} (its git history holds every "
                 "candidate: refs/candidates/*). Read ledger.tsv, notes.md and the trials' traces under trials/, "
                 "make ONE general change to the target file above the banner, and call finish with a one-line "
                 "hypothesis and a one-line description. The API the file is written against: api.md."]
        if ctx.main_metric:
            lines.append(f"Goal metric: validation {ctx.main_metric} (the mean over the task's validation sets); the "
                         "gate decides on it alone, dev stands beside it.")
        if ctx.trial_seconds:
            lines.append(f"Trial budget: {ctx.trial_seconds / 60:.1f} min ({ctx.trial_seconds:.0f} s) of wall clock per "
                         "trial, from its start: loading, training, evaluating and saving all fit inside it.")
        if ctx.device:
            lines.append(f"Trials run on a {ctx.device.upper()}: knobs tagged for the other device do not act there.")
        if len(self.pending) > BRIEF_FEEDBACK:  # after a resume it hears about every decided candidate again
            lines.append(f"- ({len(self.pending) - BRIEF_FEEDBACK} earlier outcomes: see ledger.tsv)")
        for fb in self.pending[-BRIEF_FEEDBACK:]:
            score = "" if fb.value is None else f" (score {fb.value:.4f})"
            tested = f" | hypothesis: {fb.hypothesis}" if fb.hypothesis else ""
            lines.append(f"- candidate {fb.iteration}: {fb.status}{score}: {fb.message}{tested}")
        return "\n".join(lines)

    def _tools(self, view: View, ctx: ProposeContext) -> tuple[dict[str, "_Tool"], list[str]]:
        finished: list[tuple[str, str]] = []

        def finish(description: str, hypothesis: str = "") -> str:
            # required in the schema; a call without one still ends the iteration, its row saying so
            finished.append((description, hypothesis or "(no hypothesis given)"))
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
            _Tool("finish", "End this iteration: the target file as it is now becomes the candidate. hypothesis: one "
                  "line, what you expect to improve in the goal metric and why (from the traces); description: one "
                  "line, the change (the commit message). Each is cut to 200 characters.",
                  {**obj, "properties": {"hypothesis": {"type": "string"}, "description": {"type": "string"}},
                   "required": ["hypothesis", "description"]}, finish),
        ]
        return {t.name: t for t in tools}, finished



def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


class _ConversationLog:
    """requests.jsonl: one record per request, holding only the messages added since the one before (the first
    also holds the system prompt), so the log of a 40-turn conversation is its length, not 40 copies of it.
    The request of turn k is the concatenation of the iteration's records up to k."""

    def __init__(self, path: Path, iteration: int, system: str):
        self.path, self.iteration, self.system, self.logged = path, iteration, system, 0

    def write(self, messages: list[Message]) -> None:
        if self.logged == len(messages):
            return
        record = {"time": time.time(), "iteration": self.iteration, "turn_from": self.logged,
                  "messages": [{"role": m.role, "text": m.text, "tool_calls": [vars(c) for c in m.tool_calls],
                                "name": m.name} for m in messages[self.logged:]]}
        if self.logged == 0:
            record["system"] = self.system
        append_jsonl(self.path, record)
        self.logged = len(messages)


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
        offset = max(int(offset), 0)
        with open(target, encoding="utf-8", errors="replace") as fh:  # never more than this chunk in memory
            if offset:
                fh.read(offset)  # characters, as the offset counts them; read in one go, but only up to the chunk
            chunk = fh.read(READ_LIMIT)
            more = bool(fh.read(1))
        return chunk + (f"\n… [more: read again with offset={offset + len(chunk)}]" if more else "")

    def grep(self, pattern: str, path: str = ".") -> str:
        """RE2, not Python's re: linear in the text whatever the pattern ((a+)+$ included), over at most GREP_BYTES
        of the view."""
        options = re2.Options()
        options.log_errors = False
        try:
            regex = re2.compile(pattern, options)
        except re2.error as exc:
            raise ViewError(f"not a pattern RE2 takes ({exc}); RE2 has no backreferences or lookarounds") from None
        base = self.path(path)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file() and ".git" not in p.parts)
        hits, budget = [], GREP_BYTES
        for file in files:
            with open(file, encoding="utf-8", errors="replace") as fh:
                lineno = 1
                while piece := fh.readline(GREP_LINE):  # a line longer than GREP_LINE is searched in pieces
                    budget -= len(piece)
                    if budget < 0:
                        return "\n".join(hits + [f"… [stopped after {GREP_BYTES // 2**20} MB of the view: "
                                                  "give a path to search less]"])
                    if regex.search(piece):
                        hits.append(f"{file.relative_to(self.root)}:{lineno}: {piece.rstrip()[:300]}")
                        if len(hits) >= GREP_LIMIT:
                            return "\n".join(hits) + "\n… [more matches cut]"
                    lineno += piece.endswith("\n")
        return "\n".join(hits) or "no matches"

    def edit_target(self, old: str, new: str) -> str:
        source = self.target.read_text()
        if source.count(old) != 1:
            raise ViewError(f"old must occur exactly once in the target file; it occurs {source.count(old)} times")
        updated = source.replace(old, new)
        if editable.split(updated)[1] != editable.split(source)[1]:
            raise ViewError("that edit changes the fixed adapter below the banner; only the part above it may change")
        editable.check_size(updated, "the target file after that edit")  # refused: the file stays as it was
        try:
            data = updated.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ViewError(f"that edit is not UTF-8 text ({exc.reason}); write plain text") from None
        self.target.write_bytes(data)
        return f"edited {self.target_rel}"

    def write_notes(self, text: str) -> str:
        data = str(text).encode("utf-8", "backslashreplace")
        if len(data) > NOTES_LIMIT:
            raise ViewError(f"notes.md would be {len(data):,} bytes, over its cap of {NOTES_LIMIT // 1024} KB: keep "
                            "what matters")
        (self.root / "notes.md").write_bytes(data)
        return "notes.md written"
