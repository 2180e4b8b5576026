"""One event schema for every agent's trace (trace.jsonl), close to ATIF so other tools can read it.

Each line of trace.jsonl is one Event. Parsers of raw CLI streams (agents/cli/*) and the harness
agent both emit these; trace.md is rendered from them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

Kind = Literal["system", "user", "assistant", "tool_call", "tool_result", "usage", "error"]


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: "Usage") -> "Usage":
        cost = None if self.cost_usd is None and other.cost_usd is None else (self.cost_usd or 0) + (other.cost_usd or 0)
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            cost,
        )


@dataclass
class Event:
    kind: Kind
    ts: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    text: str | None = None  # assistant/user/system text, or a tool result's output
    tool: str | None = None  # tool name for tool_call / tool_result
    call_id: str | None = None  # links a tool_result to its tool_call
    args: dict[str, Any] | None = None  # tool_call arguments
    is_error: bool | None = None  # tool_result failed
    usage: Usage | None = None
    source: str | None = None  # which agent/parser produced it (claude, codex, gemini, harness, recipe)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "Event":
        data = json.loads(line)
        if data.get("usage") is not None:
            data["usage"] = Usage(**data["usage"])
        return cls(**data)


MAX_TRACE_BYTES = 200 * 2**20  # of one trace.jsonl; what an agent's events hold past it is dropped, and said so


class TraceWriter:
    """Appends events to trace.jsonl as they happen (flushed per line: nothing lost on a crash), up to max_bytes:
    then one error event says the rest is dropped, and the events that follow are counted, not written."""

    def __init__(self, path: Path, source: str | None = None, max_bytes: int = MAX_TRACE_BYTES):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.last_event: Event | None = None
        self.started = time.time()
        self.dropped = 0

    def emit(self, event: Event) -> Event:
        if event.source is None:
            event.source = self.source
        line = (event.to_json() + "\n").encode("utf-8", errors="backslashreplace")  # a lone surrogate from JSON
        with self._lock, open(self.path, "ab") as fh:
            written = fh.tell()
            if self.dropped or written + len(line) > self.max_bytes:
                if not self.dropped:
                    cut = Event("error", text=f"trace.jsonl reached its cap of {self.max_bytes} bytes; later events "
                                              "are dropped", source=self.source)
                    fh.write((cut.to_json() + "\n").encode())
                self.dropped += 1
            else:
                fh.write(line)
        self.last_event = event
        return event


def read_trace(path: Path) -> list[Event]:
    if not Path(path).exists():
        return []
    return [Event.from_json(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def total_usage(events: list[Event]) -> Usage:
    total = Usage()
    for event in events:
        if event.usage is not None:
            total = total + event.usage
    return total


def render_markdown(events: list[Event], limit: int = 2000) -> str:
    """A readable trace.md: one section per event, long outputs cut."""

    def cut(text: str) -> str:
        return text if len(text) <= limit else text[:limit] + f"\n… [{len(text) - limit} more chars]"

    lines = ["# Trace", ""]
    for event in events:
        stamp = event.ts[11:19]
        if event.kind == "tool_call":
            lines += [f"**{stamp} tool call `{event.tool}`**", "```json", json.dumps(event.args, indent=1)[:limit], "```"]
        elif event.kind == "tool_result":
            flag = " (error)" if event.is_error else ""
            lines += [f"**{stamp} result{flag}**", "```", cut(event.text or ""), "```"]
        elif event.kind == "usage" and event.usage:
            u = event.usage
            cost = f", ${u.cost_usd:.4f}" if u.cost_usd is not None else ""
            lines += [f"_{stamp} usage: {u.input_tokens} in, {u.output_tokens} out{cost}_"]
        else:
            lines += [f"**{stamp} {event.kind}**", "", cut(event.text or "")]
        lines.append("")
    return "\n".join(lines)
