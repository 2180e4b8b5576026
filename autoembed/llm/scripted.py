"""`scripted:<file.json>`: replays a fixed sequence of responses. For tests and demos without keys.

The file is a JSON list; each item is {"text": str?, "tool_calls": [{"name": str, "arguments": {...}}]?}.
When the script runs out, the model answers with a final text and no tool calls.
"""

from __future__ import annotations

import json
from pathlib import Path

from autoembed.llm.base import LLM, LLMError, Message, Response, ToolCall, ToolSpec
from autoembed.trace import Usage


class ScriptedLLM(LLM):
    provider = "scripted"

    def __init__(self, model: str, script: list[dict] | None = None, **_ignored):
        super().__init__(model)
        if script is None:
            path = Path(model)
            if not path.is_file():
                raise LLMError(f"scripted provider: no script file {path} (use scripted:<path to a JSON list of responses>)")
            try:
                script = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise LLMError(f"scripted provider: {path} is not valid JSON: {exc}") from None
        if not isinstance(script, list):
            raise LLMError("scripted provider: the script must be a JSON list of responses")
        self.script = list(script)
        self.calls = 0

    def complete(self, messages: list[Message], *, system: str | None = None, tools: list[ToolSpec] | None = None,
                 max_tokens: int = 4096) -> Response:
        self.calls += 1
        item = self.script.pop(0) if self.script else {"text": "The script is finished."}
        known = {t.name for t in tools or []}
        calls = []
        for i, call in enumerate(item.get("tool_calls", [])):
            if known and call["name"] not in known:
                raise LLMError(f"scripted provider: tool {call['name']!r} is not offered (offered: {sorted(known)})")
            calls.append(ToolCall(id=f"call_{self.calls}_{i}", name=call["name"], arguments=call.get("arguments", {})))
        usage = Usage(input_tokens=sum(len(m.text or "") for m in messages) // 4, output_tokens=len(item.get("text") or "") // 4,
                      cost_usd=0.0)
        self.total_usage = self.total_usage + usage
        return Response(text=item.get("text"), tool_calls=calls, usage=usage,
                        stop_reason="tool_use" if calls else "end_turn", model=f"scripted:{self.model}")
