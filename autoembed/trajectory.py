"""trajectory.json in ATIF (the Agent Trajectory Interchange Format of Harbor and AutoAgent, v1.4) for every
agent kind.

The model's side comes from the gateway's record (gateway_bodies.jsonl): one agent step per answered call, with
what the model said (text, reasoning, tool calls), its tokens and cost as the gateway counted them. A tool
call's observation is what the agent sent back to the model in a later request (the tool result blocks), so
the trajectory shows what the model saw; a call whose result never went back (the last one, an agent stopped at
the deadline) takes the result from the trace's tool events. An agent without a model (the recipe) has no
gateway record: its steps are the trace's tool calls and results.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from autoembed.gateway.wire import WIRES
from autoembed.trace import Event

SCHEMA_VERSION = "ATIF-v1.4"


def build(*, session_id: str, agent: dict, prompt: str, started: float | None, calls: list[dict],
          events: list[Event]) -> dict:
    """calls: gateway_bodies.jsonl rows in order; events: trace.jsonl. agent: {"name", "version", "model_name"?}."""
    steps: list[dict] = [{"step_id": 1, "source": "user", "message": prompt,
                          **({"timestamp": _iso(started)} if started else {})}]
    answered = [i for i, c in enumerate(calls) if c.get("response") and (c.get("status") or 0) < 400]
    traced = {e.call_id: e.text or "" for e in events if e.kind == "tool_result" and e.call_id}
    if answered:
        for index in answered:  # a later request carries the results back, whether or not it was answered
            steps.append(_model_step(len(steps) + 1, calls[index], calls[index + 1:], traced))
    else:
        steps += _tool_steps(len(steps) + 1, events)
    refused = [{"timestamp": _iso(c["ts"]), "refused": c.get("refused") or c.get("limit"), "message": c.get("error")}
               for c in calls if c.get("refused") or c.get("limit")]
    metrics = [s.get("metrics", {}) for s in steps]
    costs = [m.get("cost_usd") for m in metrics if m]
    final = {"total_prompt_tokens": sum(m.get("prompt_tokens", 0) for m in metrics),
             "total_completion_tokens": sum(m.get("completion_tokens", 0) for m in metrics),
             "total_cached_tokens": sum(m.get("cached_tokens", 0) for m in metrics),
             "total_cost_usd": None if any(c is None for c in costs) else round(sum(costs), 8),
             "total_steps": len(steps), "extra": {"model_calls": len(answered), "refused_calls": refused}}
    return {"schema_version": SCHEMA_VERSION, "session_id": session_id, "agent": agent, "steps": steps,
            "notes": "agent steps are the model calls recorded by the autoembed LLM gateway; observations are the "
                     "tool results the agent sent back to the model (else the trace's tool results)",
            "final_metrics": final}


def write(path: Path, **kwargs) -> dict:
    trajectory = build(**kwargs)
    Path(path).write_text(json.dumps(trajectory, indent=1, ensure_ascii=False, default=str))
    return trajectory


def read_calls(bodies_path: Path | None) -> list[dict]:
    if bodies_path is None or not Path(bodies_path).is_file():
        return []
    rows = []
    for line in Path(bodies_path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the rest still counts
            continue
    return rows


def _model_step(step_id: int, call: dict, later: list[dict], traced: dict[str, str]) -> dict:
    wire = WIRES[call["provider"]]
    reply = wire.reply(call["response"])
    step = {"step_id": step_id, "timestamp": _iso(call["ts"]), "source": "agent",
            "model_name": call.get("model") or None, "message": reply.text}
    if reply.reasoning:
        step["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        step["tool_calls"] = reply.tool_calls
        results = _results_for([c["tool_call_id"] for c in reply.tool_calls], later, traced)
        if results:
            step["observation"] = {"results": results}
    usage = call.get("usage") or {}
    cached, written = usage.get("cache_read_tokens", 0), usage.get("cache_write_tokens", 0)
    step["metrics"] = {"prompt_tokens": usage.get("input_tokens", 0) + cached + written,
                       "completion_tokens": usage.get("output_tokens", 0), "cached_tokens": cached,
                       "cost_usd": usage.get("cost_usd"), "extra": {"cache_write_tokens": written}}
    step["extra"] = {"provider": call["provider"], "path": call.get("path"), "status": call.get("status"),
                     "latency_s": call.get("latency_s"), "stream": call.get("stream")}
    return step


def _results_for(ids: list[str], later: list[dict], traced: dict[str, str]) -> list[dict]:
    wanted, found = set(ids), {}
    for call in later:
        if call.get("provider") not in WIRES or not call.get("request"):
            continue
        for call_id, content in WIRES[call["provider"]].tool_results(call["request"]):
            if call_id in wanted and call_id not in found:
                found[call_id] = content
        if len(found) == len(wanted):
            break
    for call_id in wanted - set(found):
        if call_id in traced:
            found[call_id] = traced[call_id]
    return [{"source_call_id": i, "content": found[i]} for i in ids if i in found]


def _tool_steps(first_id: int, events: list[Event]) -> list[dict]:
    """An agent without a model: each tool call of the trace is a step with its result."""
    results = {e.call_id: e for e in events if e.kind == "tool_result"}
    steps = []
    for event in events:
        if event.kind == "tool_call":
            step = {"step_id": first_id + len(steps), "timestamp": event.ts, "source": "agent", "message": "",
                    "tool_calls": [{"tool_call_id": event.call_id or "", "function_name": event.tool or "",
                                    "arguments": event.args or {}}]}
            if event.call_id in results:
                step["observation"] = {"results": [{"source_call_id": event.call_id,
                                                    "content": results[event.call_id].text or ""}]}
            steps.append(step)
        elif event.kind == "assistant" and event.text:
            steps.append({"step_id": first_id + len(steps), "timestamp": event.ts, "source": "agent",
                          "message": event.text})
    return steps


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")
