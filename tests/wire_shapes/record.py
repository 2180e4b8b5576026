"""Records what each real CLI sends and gets through the gateway (gateway_bodies.jsonl) into the fixtures beside
this file, which tests/test_wire_shapes.py runs through autoembed/gateway/wire.py and the trajectory writer.

    python -m tests.wire_shapes.record [claude|codex|gemini|codex-custom ...]

The fake server answers; the shapes of the requests (how each CLI declares its tools, replays the history and
sends tool results back) are the CLIs' own. codex-custom answers Codex's default model with custom tools
(`custom_tool_call`), as OpenAI's servers do for it. Long strings (system prompts, tool descriptions) are cut.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from autoembed.agents.base import TrialContext
from autoembed.trace import TraceWriter
from tests.fakellm import FakeLLM, Turn
from tests.fakellm import openai as fake_openai
from tests.gated import gated_sandbox

HERE = Path(__file__).parent
MAX_STRING = 400


def _cut(value):
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + f"…[{len(value) - MAX_STRING} cut]"
    if isinstance(value, list):
        return [_cut(v) for v in value]
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    return value


def _shell_call(body: dict, script: str) -> tuple[str, dict]:
    names = {t.get("name") for t in body.get("tools", [])}
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            for declared in item.get("tools") or []:
                names |= {t.get("name") for t in [declared, *(declared.get("tools") or [])]}
    if "exec" in names and "exec_command" not in {t.get("name") for t in body.get("tools", [])}:
        return "exec", {"cmd": f"const out = await tools.exec_command({{cmd: {json.dumps(script)}}}); text(out);"}
    for name, args in (("exec_command", {"cmd": script}), ("shell_command", {"command": script}),
                       ("shell", {"command": ["bash", "-lc", script]})):
        if name in names:
            return name, args
    raise AssertionError(f"no shell tool among {sorted(n for n in names if n)}")


def _answered(body: dict) -> int:
    count = 0
    for item in body.get("input") or []:
        count += isinstance(item, dict) and item.get("type") in ("function_call_output", "custom_tool_call_output")
    for content in body.get("contents") or []:
        count += sum(1 for p in content.get("parts") or [] if "functionResponse" in p)
    for message in body.get("messages") or []:
        count += sum(1 for b in message.get("content") or [] if isinstance(b, dict) and b.get("type") == "tool_result")
    return count


def record(name: str) -> Path:
    from autoembed.agents.cli.claude import ClaudeCodeAgent
    from autoembed.agents.cli.codex import CodexAgent
    from autoembed.agents.cli.gemini import GeminiAgent

    tmp = Path(tempfile.mkdtemp(prefix=f"shapes-{name}-"))
    workdir = tmp / "work"
    agent = {"claude": lambda: ClaudeCodeAgent(model="claude-sonnet-4-6"), "codex": lambda: CodexAgent(model="gpt-5"),
             "codex-custom": lambda: CodexAgent(), "gemini": lambda: GeminiAgent()}[name]()
    agent.max_turns = 1
    tool = {"claude": "Bash", "gemini": "run_shell_command"}.get(name)

    def script(body: dict) -> Turn:
        done = _answered(body)
        if done >= 2:
            return Turn(text="All done.")
        command = ["echo one > one.txt", "cat one.txt"][done]
        if tool:
            return Turn(text=f"Step {done + 1}.", tool_calls=[(tool, {"command": command})])
        return Turn(text=f"Step {done + 1}.", tool_calls=[_shell_call(body, command)])

    original = fake_openai._responses_output
    os.environ.setdefault("AUTOEMBED_PRICES", "gpt-6.2-sol=1,8")  # Codex's default model, unpriced in the table
    if name == "codex-custom":
        def custom_output(turn: Turn) -> list[dict]:
            items = original(turn)
            for item in items:
                if item["type"] == "function_call":
                    args, item["arguments"] = json.loads(item["arguments"]), ""
                    item.update(type="custom_tool_call", input=args.get("cmd") or args.get("command"))
                    item["id"] = item["id"].replace("fc_", "ctc_")
            return items
        fake_openai._responses_output = custom_output
    try:
        with FakeLLM(script) as fake:
            with gated_sandbox("none", workdir, fake, readonly_extra=agent.readonly_mounts(),
                               providers=agent.gateway_providers) as (box, gateway, env):
                run_dir = tmp / "run"
                run_dir.mkdir()
                ctx = TrialContext(workdir=workdir, sandbox=box, deadline=time.time() + 180,
                                   prompt="Make one.txt, then show it.", model=None,
                                   trace=TraceWriter(run_dir / "trace.jsonl", source=agent.name),
                                   raw_log=run_dir / "agent.log", run_dir=run_dir, env=env,
                                   progress=lambda m: None, reprompt_margin_s=0)
                outcome = agent.run(ctx)
                bodies = gateway.bodies_path
    finally:
        fake_openai._responses_output = original
    rows = [json.loads(line) for line in bodies.read_text().splitlines()]
    keep = ("ts", "provider", "path", "status", "stream", "model", "usage", "request", "response")
    out = HERE / f"{name}.jsonl"
    out.write_text("".join(json.dumps(_cut({k: r.get(k) for k in keep}), ensure_ascii=False) + "\n" for r in rows))
    version = agent.versions()
    print(f"{name}: {outcome.exit_reason}, {len(rows)} calls -> {out} ({version}); log {ctx.raw_log}")
    return out


if __name__ == "__main__":
    for which in sys.argv[1:] or ["claude", "codex", "codex-custom", "gemini"]:
        record(which)
