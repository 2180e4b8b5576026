"""Gemini CLI as a trial agent: `gemini --yolo --output-format stream-json -p PROMPT`.

Isolation: GEMINI_CLI_HOME (and HOME, under the none sandbox, where HOME would be the user's own)
points at the trial's `.agent/gemini/`, whose `.gemini/` holds
  settings.json       auth type gemini-api-key, usage statistics/telemetry/auto-update off, and
                      secret-looking variables redacted from the environment of its shell commands
  trustedFolders.json the workdir as TRUST_FOLDER: in an untrusted folder the CLI overrides --yolo
                      back to "default" approval and, headless, exits with code 55
so no user-level config, extension or MCP server leaks in, and its sessions stay inside the trial.

Re-prompts continue the session with `--resume <session id>` (the id comes from the stream's init
event) when the installed CLI has --resume; otherwise a fresh session gets a prompt that summarises
what the previous one did.

The prompt goes as --prompt=TEXT with every @ escaped (see escape_at).

Stream events (one JSON object a line; stderr noise is interleaved and skipped):
  init {session_id, model} · message {role, content, delta} · tool_use {tool_name, tool_id, parameters}
  tool_result {tool_id, status, output, error} · error {severity, message} · result {status, error, stats}
Assistant deltas are joined into one assistant event, flushed at the next other event.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from autoembed.agents.base import TrialContext
from autoembed.agents.cli.base import CliAgent
from autoembed.llm.pricing import estimate_cost
from autoembed.models import CLI_AGENTS, PROVIDERS, key_from, key_names, model_id
from autoembed.trace import Event, Usage

SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": True},
                 # keeps GEMINI_API_KEY (and other *KEY*/*TOKEN* variables) out of the shell commands it runs
                 "environmentVariableRedaction": {"enabled": True}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}
PROVIDER = CLI_AGENTS["gemini"]
CREDENTIALS = key_names(PROVIDER, cli=True)
UNTRUSTED_EXIT = 55  # the CLI's exit code when the folder is not trusted


class GeminiAgent(CliAgent):
    name = "gemini"
    binary = "gemini"
    product = "gemini-cli"

    def __init__(self, model: str | None = None):
        super().__init__(model)
        self.session_id: str | None = None
        self.notes: list[str] = []  # what the agent did, for a summarising re-prompt
        self._tool_names: dict[str, str] = {}
        self._text: list[str] = []
        self._text_ts: str | None = None
        self._resume: bool | None = None
        self._env: dict[str, str] = {}

    gateway_providers = (PROVIDERS[PROVIDER].wire,)

    def readonly_mounts(self) -> list[Path]:
        """The CLI's npm package: bin/gemini is a symlink to <package>/bundle/gemini.js."""
        found = shutil.which(self.binary)
        return [Path(found).resolve().parent.parent] if found else []

    def versions(self) -> dict[str, str]:
        manifests = [m / "package.json" for m in self.readonly_mounts() if (m / "package.json").is_file()]
        return {"gemini-cli": json.loads(manifests[0].read_text()).get("version", "?")} if manifests else {}

    # -- config ---------------------------------------------------------------------------------
    def write_config(self, ctx: TrialContext, config_dir: Path) -> dict[str, str]:
        gemini_dir = config_dir / ".gemini"
        gemini_dir.mkdir(parents=True, exist_ok=True)
        (gemini_dir / "settings.json").write_text(json.dumps(SETTINGS, indent=2))
        trusted = {ctx.sandbox.workdir_inside: "TRUST_FOLDER"}
        (gemini_dir / "trustedFolders.json").write_text(json.dumps(trusted, indent=2))
        home = self.inside(ctx, config_dir)
        env = {"GEMINI_CLI_HOME": home, "NO_COLOR": "1"}
        if ctx.sandbox.kind == "none":  # bwrap/docker already give a fresh HOME in the workdir (with its .profile)
            env["HOME"] = home  # a few code paths read ~ directly: keep them off the user's real home
        key = key_from(ctx.env, CREDENTIALS)
        if key:
            env["GEMINI_API_KEY"] = key  # auth type gemini-api-key reads only this one
        if ctx.env.get("GOOGLE_GEMINI_BASE_URL"):
            env["GOOGLE_GEMINI_BASE_URL"] = ctx.env["GOOGLE_GEMINI_BASE_URL"]
        if not key:
            ctx.progress("gemini: neither GEMINI_API_KEY nor GOOGLE_API_KEY is set: the CLI will fail to authenticate")
        self._env = {**ctx.env, **env}
        return env

    def argv(self, ctx: TrialContext, prompt: str, first: bool) -> list[str]:
        args = [self.binary, "--yolo", "--output-format", "stream-json"]
        model = self.model_name(ctx)
        if model:
            args += ["--model", model]
        if not first:
            if self.can_resume(ctx):
                args += ["--resume", self.session_id or "latest"]
            else:
                prompt = self.summarising_prompt(prompt)
        return args + ["--prompt=" + escape_at(prompt)]  # "=": a prompt starting with "-" is not an option

    def model_name(self, ctx: TrialContext) -> str | None:
        return model_id(self.model or ctx.model, PROVIDER) or None

    def can_resume(self, ctx: TrialContext) -> bool:
        if self._resume is None:
            result = ctx.sandbox.exec([self.binary, "--help"], timeout=60, env=self._env)
            self._resume = "--resume" in result.stdout
            if not self._resume:
                ctx.progress("gemini: this CLI has no --resume; re-prompting in a new session with a summary")
        return self._resume

    def summarising_prompt(self, prompt: str) -> str:
        done = "\n".join(f"- {note}" for note in self.notes[-30:]) or "- (nothing recorded)"
        return (f"{prompt}\n\nThis is a new session; the previous one ended. What it did, most recent last:\n{done}\n"
                "Its files are still in the working directory.")

    def _one_turn(self, ctx: TrialContext, argv: list[str], env: dict[str, str], raw) -> int | None:
        code = super()._one_turn(ctx, argv, env, raw)
        for event in self.flush():  # text still buffered when the stream ended
            ctx.trace.emit(event)
        if code == UNTRUSTED_EXIT:
            ctx.progress("gemini exited with 55: the workdir is not trusted (see trustedFolders.json in .agent/gemini)")
        return code

    # -- stream parser ----------------------------------------------------------------------------
    def parse_line(self, line: str) -> list[Event]:
        line = line.strip()
        if not line.startswith("{"):
            return []
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return []
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return []
        if data["type"] == "message" and data.get("role") == "assistant":
            if not self._text:
                self._text_ts = data.get("timestamp")
            self._text.append(str(data.get("content") or ""))
            return [] if data.get("delta") else self.flush()
        events = self.flush()  # text before the next event is one assistant message
        try:
            return events + self._parse(data)
        except (AttributeError, TypeError, ValueError):  # a field of an unexpected shape: keep the raw line
            return events + [Event("system", text=f"unparsed gemini event: {line[:2000]}", source=self.name)]

    def flush(self) -> list[Event]:
        if not self._text:
            return []
        text = "".join(self._text)
        self._text = []
        self.notes.append(f"said: {_cut(text, 300)}")
        return [self._event("assistant", self._text_ts, text=text)]

    def _parse(self, data: dict[str, Any]) -> list[Event]:
        kind, ts, events = data["type"], data.get("timestamp"), []
        if kind == "init":
            self.session_id = data.get("session_id") or self.session_id
            events.append(self._event("system", ts, text=f"gemini session {data.get('session_id')}, "
                                                           f"model {data.get('model')}"))
        elif kind == "tool_use":
            call_id, tool = data.get("tool_id"), data.get("tool_name")
            self._tool_names[call_id] = tool
            args = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
            self.notes.append(f"ran {tool}: {_cut(json.dumps(args, ensure_ascii=False), 300)}")
            events.append(self._event("tool_call", ts, tool=tool, call_id=call_id, args=args))
        elif kind == "tool_result":
            call_id, error = data.get("tool_id"), data.get("error") or {}
            text, detail = data.get("output"), error.get("message")
            if detail and detail not in (text or ""):  # "File not found." + "File not found: /w/missing.txt"
                text = f"{text}\n{detail}" if text else detail
            if text is None:  # results shown as diffs etc. have no text form in the stream
                text = f"({data.get('status')}, no text output)"
            events.append(self._event("tool_result", ts, tool=self._tool_names.get(call_id), call_id=call_id,
                                      text=text, is_error=data.get("status") != "success"))
        elif kind == "error":
            events.append(self._event("error", ts, text=f"{data.get('severity', 'error')}: {data.get('message')}"))
        elif kind == "result":
            if data.get("status") == "error" or data.get("error"):
                error = data.get("error") or {}
                events.append(self._event("error", ts, text=f"{error.get('type', 'error')}: {error.get('message')}"))
            stats = data.get("stats") or {}
            events.append(self._event("usage", ts, usage=usage_from_stats(stats),
                                      text=f"turn {data.get('status')}: {stats.get('tool_calls', 0)} tool calls, "
                                           f"{stats.get('duration_ms', 0)} ms"))
        return events  # "message" from the user echoes the prompt the runner already logged

    def _event(self, kind: str, ts: str | None, **fields) -> Event:
        event = Event(kind, source=self.name, **fields)
        if isinstance(ts, str) and ts:
            event.ts = ts.replace("Z", "+00:00")
        return event


def usage_from_stats(stats: dict) -> Usage:
    """The result event's stats cover the whole CLI run (all models it called, side calls included).
    input_tokens there counts cached tokens too; `input` is the uncached part. Cost only when every
    model has a price: a partial sum would look like the whole bill."""
    def one(entry: dict) -> Usage:
        cached = int(entry.get("cached") or 0)
        uncached = entry.get("input")
        if uncached is None:
            uncached = int(entry.get("input_tokens") or 0) - cached
        return Usage(input_tokens=max(0, int(uncached)), output_tokens=int(entry.get("output_tokens") or 0),
                     cache_read_tokens=cached)

    models = stats.get("models") or {}
    if not models:
        return one(stats)
    total, costs = Usage(), []
    for model, entry in models.items():
        usage = one(entry)
        total = total + usage
        costs.append(estimate_cost(model, usage))
    total.cost_usd = None if any(c is None for c in costs) else sum(costs)
    return total


def escape_at(prompt: str) -> str:
    """The CLI reads "@path" in a prompt as "inline this file" (and splits "nDCG@10" into "nDCG @10");
    a backslash before it keeps the text as written (the model sees "\\@", no file is pulled in)."""
    return re.sub(r"(?<!\\)@", r"\\@", prompt)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
