"""OpenAI Codex CLI as a trial agent: `codex exec --json --skip-git-repo-check
--dangerously-bypass-approvals-and-sandbox`, one process per turn; re-prompts continue the same thread
with `codex exec resume <thread id>` (or `--last` when no id was seen).

Traps this handles:
- codex ignores OPENAI_BASE_URL: the endpoint comes from a [model_providers.autoembed] entry (base_url,
  env_key, wire_api = "responses", the only wire API current releases accept) selected by model_provider
  in a per-trial config.toml under CODEX_HOME = <workdir>/.agent/codex/, so the user's ~/.codex stays out;
- the key travels only as OPENAI_API_KEY in this process's environment (never in a file), and
  shell_environment_policy keeps it out of the commands the agent runs;
- web search (a hosted tool that local servers reject) and analytics are off;
- turn.completed reports the thread's cumulative usage (checked on codex-cli 0.169.0: a resumed thread's
  first turn.completed includes the earlier turns), so usage events carry the difference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from autoembed.agents.base import AgentOutcome, TrialContext
from autoembed.agents.cli.base import CliAgent
from autoembed.llm.pricing import estimate_cost
from autoembed.models import CLI_AGENTS, PROVIDERS, key_from, key_names, model_id
from autoembed.trace import Event, Usage

PROVIDER = CLI_AGENTS["codex"]
CREDENTIALS = key_names(PROVIDER, cli=True)
PROVIDER_ID = "autoembed"
OPENAI_BASE_URL = "https://api.openai.com/v1"
LOCAL_KEY_PLACEHOLDER = "not-needed"  # a local server ignores the key, codex insists on one
# turn.completed usage; input_tokens includes the cached (read and written) ones, as in OpenAI's API
USAGE_KEYS = ("input_tokens", "cached_input_tokens", "cache_write_input_tokens", "output_tokens")


class CodexAgent(CliAgent):
    name = "codex"
    binary = "codex"
    product = "codex"

    def __init__(self, model: str | None = None, base_url: str | None = None, web_search: bool = False):
        super().__init__(model_id(model, PROVIDER))
        self.base_url = base_url
        self.web_search = web_search
        self._reset_stream_state()

    def _reset_stream_state(self) -> None:
        self.thread_id: str | None = None
        self._usage_seen = (0, 0, 0, 0)  # the thread's cumulative USAGE_KEYS so far
        self._started: set[str] = set()  # call ids whose tool_call was already emitted
        self._process = 0  # codex numbers items from item_0 in every process: call ids get this prefix

    # -- launching ------------------------------------------------------------------------------
    gateway_providers = (PROVIDERS[PROVIDER].wire,)

    def readonly_mounts(self) -> list[Path]:
        found = shutil.which(self.binary)
        if found is None:
            return []
        real = Path(os.path.realpath(found))  # .../node_modules/@openai/codex/bin/codex.js
        return [real.parent.parent if real.parent.name == "bin" else real.parent]

    def endpoint(self, ctx: TrialContext) -> str:
        return (self.base_url or ctx.env.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")

    def run(self, ctx: TrialContext) -> AgentOutcome:
        if self.endpoint(ctx) == OPENAI_BASE_URL and not key_from(ctx.env, CREDENTIALS):
            return AgentOutcome("crashed", "Codex needs an API key: set OPENAI_API_KEY (or CODEX_API_KEY), or "
                                           "OPENAI_BASE_URL for a local OpenAI-compatible server")
        self._reset_stream_state()
        return super().run(ctx)

    def write_config(self, ctx: TrialContext, config_dir: Path) -> dict[str, str]:
        (config_dir / "config.toml").write_text(self.config_toml(ctx), encoding="utf-8")
        key = key_from(ctx.env, CREDENTIALS) or LOCAL_KEY_PLACEHOLDER
        return {"CODEX_HOME": self.inside(ctx, config_dir), "OPENAI_API_KEY": key}

    def config_toml(self, ctx: TrialContext) -> str:
        lines = []
        if self.model:
            lines.append(f"model = {_toml_str(self.model)}")
        lines += [
            f"model_provider = {_toml_str(PROVIDER_ID)}",
            f"web_search = {_toml_str('live' if self.web_search else 'disabled')}",
            "check_for_update_on_startup = false",
            "",
            "[analytics]",
            "enabled = false",
            "",
            "[shell_environment_policy]",  # the agent's commands never see the key
            f"exclude = {json.dumps(list(CREDENTIALS))}",
            "",
            f"[model_providers.{PROVIDER_ID}]",
            f"name = {_toml_str(PROVIDER_ID)}",
            f"base_url = {_toml_str(self.endpoint(ctx))}",
            'env_key = "OPENAI_API_KEY"',
            'wire_api = "responses"',
        ]
        return "\n".join(lines) + "\n"

    def argv(self, ctx: TrialContext, prompt: str, first: bool) -> list[str]:
        cmd = [self.binary, "exec"] + ([] if first else ["resume"])
        cmd += ["--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
        if self.model:
            cmd += ["-m", self.model]
        if first:
            return cmd + ["--", prompt]  # "--": a prompt that starts with "-" is not read as an option
        if self.thread_id:
            return cmd + ["--", self.thread_id, prompt]
        return cmd + ["--last", "--", prompt]

    def versions(self) -> dict[str, str]:
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=30)
            return {"codex": (out.stdout or out.stderr).strip()}
        except (OSError, subprocess.SubprocessError) as exc:
            return {"codex": f"unavailable: {exc}"}

    # -- parsing --------------------------------------------------------------------------------
    def parse_line(self, line: str) -> list[Event]:
        line = line.strip()
        if not line:
            return []
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            # stderr is merged in: keep codex's own error lines, drop its chatter ("Reading additional input ...")
            return [Event("error", text=line, source=self.name)] if "ERROR" in line or line.startswith("Error") else []
        if not isinstance(data, dict):
            return []
        try:
            return self._parse_event(data)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            return [Event("error", text=f"unparsed codex event ({exc}): {line[:500]}", source=self.name)]

    def _parse_event(self, data: dict[str, Any]) -> list[Event]:
        kind = data.get("type")
        if kind == "thread.started":
            thread = data.get("thread_id")
            self._process += 1
            if thread != self.thread_id:
                self.thread_id, self._usage_seen = thread, (0, 0, 0, 0)
            return [Event("system", text=f"codex thread {thread}", source=self.name)]
        if kind == "turn.completed":
            return [self._usage_event(data.get("usage") or {})]
        if kind == "turn.failed":
            return [Event("error", text=(data.get("error") or {}).get("message") or json.dumps(data), source=self.name)]
        if kind == "error":
            return [Event("error", text=data.get("message") or json.dumps(data), source=self.name)]
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item_events(kind, data.get("item") or {})
        return []  # turn.started and anything newer

    def _item_events(self, kind: str, item: dict[str, Any]) -> list[Event]:
        item_type, item_id = item.get("type"), f"{self._process}.{item.get('id')}"
        call = _tool_call(item)
        if call is not None:
            tool, args = call
            events = []
            if item_id not in self._started and kind != "item.updated":
                self._started.add(item_id)
                events.append(Event("tool_call", tool=tool, call_id=item_id, args=args, source=self.name))
            if kind == "item.completed":
                text, failed = _tool_result(item)
                events.append(Event("tool_result", tool=tool, call_id=item_id, text=text, is_error=failed,
                                    source=self.name))
            return events
        if kind != "item.completed":
            return []
        if item_type == "agent_message":
            return [Event("assistant", text=item.get("text", ""), source=self.name)]
        if item_type == "reasoning":
            return [Event("assistant", text=f"(reasoning) {item.get('text', '')}", source=self.name)]
        if item_type == "todo_list":
            todo = item.get("items", [])
            plan = "\n".join(f"[{'x' if t.get('completed') else ' '}] {t.get('text', '')}" for t in todo)
            return [Event("assistant", text=f"(plan)\n{plan}", source=self.name)]
        if item_type == "error":  # a non-fatal notice (e.g. unknown model metadata); fatal ones are turn.failed
            return [Event("system", text=f"codex warning: {item.get('message', '')}", source=self.name)]
        return []

    def _usage_event(self, raw: dict[str, Any]) -> Event:
        now = tuple(int(raw.get(key) or 0) for key in USAGE_KEYS)
        before = self._usage_seen
        # cumulative per thread: the turn's share is the difference (a smaller total means a fresh count)
        delta = tuple(a - b for a, b in zip(now, before)) if all(a >= b for a, b in zip(now, before)) else now
        self._usage_seen = now
        total_in, cached, cache_write, out = delta
        usage = Usage(input_tokens=max(0, total_in - cached - cache_write), output_tokens=out,
                      cache_read_tokens=cached, cache_write_tokens=cache_write)
        usage.cost_usd = estimate_cost(self.model, usage) if self.model else None
        return Event("usage", usage=usage, source=self.name)


def _tool_call(item: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A tool-like item -> (tool name, arguments); None for messages and the like."""
    item_type = item.get("type")
    if item_type == "command_execution":
        return "shell", {"command": item.get("command", "")}
    if item_type == "file_change":
        return "apply_patch", {"changes": item.get("changes", [])}
    if item_type == "mcp_tool_call":
        return f"mcp:{item.get('server', '?')}/{item.get('tool', '?')}", dict(item.get("arguments") or {})
    if item_type == "web_search":
        return "web_search", {"query": item.get("query", "")}
    return None


def _tool_result(item: dict[str, Any]) -> tuple[str, bool]:
    item_type, status = item.get("type"), item.get("status")
    if item_type == "command_execution":
        code = item.get("exit_code")
        failed = status in ("failed", "declined") or (code is not None and code != 0)
        return (item.get("aggregated_output") or "") + (f"\n[exit code {code}]" if failed and code else ""), failed
    if item_type == "file_change":
        text = "\n".join(f"{c.get('kind', '?')} {c.get('path', '?')}" for c in item.get("changes", []))
        return text, status == "failed"
    if item_type == "mcp_tool_call":
        if item.get("error"):
            return str((item["error"] or {}).get("message", item["error"])), True
        return json.dumps(item.get("result"), ensure_ascii=False), status == "failed"
    return "", status == "failed"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string
