"""Claude Code as a trial agent: `claude --print --verbose --output-format stream-json
--dangerously-skip-permissions`, one process per turn, re-prompts resume the same session.

Traps this handles (from the anchors' users):
- as root, Claude Code refuses --dangerously-skip-permissions unless IS_SANDBOX=1;
- --bare reads only ANTHROPIC_API_KEY, never CLAUDE_CODE_OAUTH_TOKEN, so it is never used here;
- its config (sessions, .claude.json) lives in CLAUDE_CONFIG_DIR, one per trial inside the workdir's
  .agent/claude/, so nothing of the user's ~/.claude leaks in and trials do not see each other;
- its Bash tool needs a writable temp dir (CLAUDE_CODE_TMPDIR, default /tmp/claude-<uid>): without one
  every command fails with EROFS in a sandbox whose /tmp is read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from autoembed.agents.base import AgentOutcome, TrialContext
from autoembed.agents.cli.base import CliAgent
from autoembed.llm.pricing import estimate_cost
from autoembed.models import CLI_AGENTS, PROVIDERS, key_from, key_names, model_id
from autoembed.trace import Event, Usage

PROVIDER = CLI_AGENTS["claude"]
CREDENTIALS = key_names(PROVIDER, cli=True)

# No telemetry, error reports, auto-updates, or side calls (title generation etc.): the agent talks
# only to its model endpoint, and a trial's traffic is the trial's work.
QUIET_ENV = {
    "IS_SANDBOX": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_NON_ESSENTIAL_MODEL_CALLS": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
    # training runs take longer than the Bash tool's default 10-minute cap
    "BASH_DEFAULT_TIMEOUT_MS": str(30 * 60 * 1000),
    "BASH_MAX_TIMEOUT_MS": str(4 * 60 * 60 * 1000),
}


class ClaudeCodeAgent(CliAgent):
    name = "claude"
    binary = "claude"
    product = "claude-code"

    def __init__(self, model: str | None = None):
        super().__init__(_strip_provider(model))
        self.session_id: str | None = None
        self._tool_names: dict[str, str] = {}  # tool_use id -> tool name, to label results
        self._model_seen: str | None = None

    # -- launching ------------------------------------------------------------------------------
    gateway_providers = (PROVIDERS[PROVIDER].wire,)

    def executable(self) -> str:
        """The CLI's real path on the host (a sandbox binds it read-only there), else its bare name."""
        found = shutil.which(self.binary)
        return os.path.realpath(found) if found else self.binary

    def readonly_mounts(self) -> list[Path]:
        if shutil.which(self.binary) is None:
            return []
        # the npm package folder: the native binary (or cli.js of older releases) and its siblings
        real = Path(self.executable())
        return [real.parent.parent if real.parent.name == "bin" else real.parent]

    def run(self, ctx: TrialContext) -> AgentOutcome:
        if not key_from(ctx.env, CREDENTIALS):
            return AgentOutcome("crashed", "Claude Code needs credentials: set ANTHROPIC_API_KEY, or "
                                           "CLAUDE_CODE_OAUTH_TOKEN (from `claude setup-token`) for a subscription")
        self.session_id, self._tool_names = None, {}
        return super().run(ctx)

    def write_config(self, ctx: TrialContext, config_dir: Path) -> dict[str, str]:
        # Claude Code's own temp files (the Bash tool's cwd tracking) go to CLAUDE_CODE_TMPDIR, default
        # /tmp/claude-<uid>; a sandbox may make /tmp read-only, so keep them in the trial's config dir
        tmp = config_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {**QUIET_ENV, "CLAUDE_CONFIG_DIR": self.inside(ctx, config_dir),
                "CLAUDE_CODE_TMPDIR": self.inside(ctx, tmp)}

    def argv(self, ctx: TrialContext, prompt: str, first: bool) -> list[str]:
        cmd = [self.executable(), "--print", "--verbose", "--output-format", "stream-json",
               "--dangerously-skip-permissions"]
        model = self.model or _strip_provider(ctx.model)
        if model:
            cmd += ["--model", model]
        if not first:
            cmd += ["--resume", self.session_id] if self.session_id else ["--continue"]
        return cmd + ["--", prompt]  # "--": a prompt that starts with "-" is not read as an option

    def versions(self) -> dict[str, str]:
        if shutil.which(self.binary) is None:
            return {}
        try:
            out = subprocess.run([self.executable(), "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
        return {"claude-code": out.split()[0]} if out.strip() else {}

    # -- parsing --------------------------------------------------------------------------------
    def parse_line(self, line: str) -> list[Event]:
        try:
            msg = json.loads(line)
        except (json.JSONDecodeError, ValueError):
            return []
        if not isinstance(msg, dict):
            return []
        kind = msg.get("type")
        try:
            if kind == "system":
                return self._system(msg)
            if kind == "assistant":
                return self._assistant(msg)
            if kind == "user":
                return self._user(msg)
            if kind == "result":
                return self._result(msg)
        except (AttributeError, TypeError, KeyError) as exc:  # an unexpected shape: keep going, say so
            return [Event("error", text=f"unparsed {kind} line ({exc}): {line[:500]}", source=self.name)]
        return []

    def _system(self, msg: dict) -> list[Event]:
        if msg.get("subtype") == "init":
            self.session_id = msg.get("session_id") or self.session_id
            self._model_seen = msg.get("model")
            text = (f"claude-code {msg.get('claude_code_version', '?')} session {msg.get('session_id')} "
                    f"model {msg.get('model')} cwd {msg.get('cwd')} permissions {msg.get('permissionMode')}")
            return [Event("system", text=text, source=self.name)]
        detail = {k: v for k, v in msg.items() if k not in ("type", "session_id", "uuid")}
        return [Event("system", text=json.dumps(detail, ensure_ascii=False)[:500], source=self.name)]

    def _assistant(self, msg: dict) -> list[Event]:
        events = []
        for block in msg.get("message", {}).get("content") or []:
            if block.get("type") == "text" and block.get("text"):
                events.append(Event("assistant", text=block["text"], source=self.name))
            elif block.get("type") in ("tool_use", "server_tool_use"):
                self._tool_names[block.get("id", "")] = block.get("name", "")
                events.append(Event("tool_call", tool=block.get("name"), call_id=block.get("id"),
                                    args=block.get("input") if isinstance(block.get("input"), dict)
                                    else {"input": block.get("input")}, source=self.name))
        return events

    def _user(self, msg: dict) -> list[Event]:
        content = msg.get("message", {}).get("content")
        if not isinstance(content, list):  # a plain user prompt: CliAgent already traced it
            return []
        events = []
        for block in content:
            if block.get("type") == "tool_result":
                call_id = block.get("tool_use_id")
                events.append(Event("tool_result", tool=self._tool_names.get(call_id), call_id=call_id,
                                    text=_result_text(block.get("content")), is_error=bool(block.get("is_error")),
                                    source=self.name))
        return events

    def _result(self, msg: dict) -> list[Event]:
        raw = msg.get("usage") or {}
        usage = Usage(input_tokens=int(raw.get("input_tokens") or 0), output_tokens=int(raw.get("output_tokens") or 0),
                      cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
                      cache_write_tokens=int(raw.get("cache_creation_input_tokens") or 0))
        cost = msg.get("total_cost_usd")
        usage.cost_usd = float(cost) if cost is not None else estimate_cost(_base_model(self._model_seen), usage)
        summary = (f"{msg.get('subtype')}: {msg.get('num_turns')} turns, {msg.get('duration_ms')} ms"
                   + (f", stop {msg['stop_reason']}" if msg.get("stop_reason") else ""))
        events = [Event("usage", text=summary, usage=usage, source=self.name)]
        if msg.get("is_error") or msg.get("subtype") not in (None, "success"):
            detail = msg.get("result") or msg.get("errors") or msg.get("subtype")
            events.append(Event("error", text=f"claude ended with {msg.get('subtype')}: {detail}", source=self.name))
        return events


def _result_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for item in content if isinstance(content, list) else [content]:
        if isinstance(item, dict) and item.get("type") == "text":
            parts.append(item.get("text", ""))
        elif isinstance(item, dict):
            parts.append(f"[{item.get('type', 'block')}]")
        else:
            parts.append(str(item))
    return "\n".join(parts)


def _strip_provider(model: str | None) -> str | None:
    return model_id(model, PROVIDER) or None


def _base_model(model: str | None) -> str:
    """'claude-opus-4-5[1m]' (how init names a long-context variant) -> 'claude-opus-4-5' for pricing."""
    return (model or "").split("[", 1)[0]
