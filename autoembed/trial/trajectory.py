"""trajectory.json in ATIF (the Agent Trajectory Interchange Format of Harbor and AutoAgent, v1.8; the tests validate
it with the `atif` package's models) for every agent kind.

The model's side comes from the gateway's record (gateway_bodies.jsonl): one agent step per answered call, with
what the model said (text, reasoning, tool calls), its tokens and cost as the gateway counted them. A tool
call's observation is what the agent sent back to the model in a later request (the tool result blocks), so
the trajectory shows what the model saw; a call whose result never went back (the last one, an agent stopped at
the deadline) takes the result from the trace's tool events. An agent without a model (the recipe) has no
gateway record: its steps are the trace's tool calls and results.

Tool call ids are unique within the trajectory. A reply without ids (Gemini's) takes the ids the client gave its
calls in its next request; an id seen before (a server that numbers calls from 0 on every reply) gets a suffix.
agent is the agent's own name and version (the CLI's, e.g. claude-code 2.1.197), given by the caller.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from autoembed.gateway.wire import WIRES
from autoembed.trace import Event

SCHEMA_VERSION = "ATIF-v1.8"


def build(*, session_id: str, agent: dict, prompt: str, started: float | None, calls: list[dict],
          events: list[Event]) -> dict:
    """calls: gateway_bodies.jsonl rows in order; events: trace.jsonl. agent: {"name", "version", "model_name"?}."""
    steps: list[dict] = [{"step_id": 1, "source": "user", "message": prompt,
                          **({"timestamp": _iso(started)} if started else {})}]
    answered = [i for i, c in enumerate(calls) if c.get("response") and (c.get("status") or 0) < 400]
    traced = {e.call_id: e.text or "" for e in events if e.kind == "tool_result" and e.call_id}
    if answered:
        used: set[str] = set()
        for index in answered:  # a later request carries the results back, whether or not it was answered
            steps.append(_model_step(len(steps) + 1, calls[index], calls[index + 1:], traced, used))
        offered = _tools_offered(calls)
        if offered:
            agent = {**agent, "extra": {**(agent.get("extra") or {}), "tools_offered": offered}}
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


def _model_step(step_id: int, call: dict, later: list[dict], traced: dict[str, str], used: set[str]) -> dict:
    wire = WIRES[call["provider"]]
    reply = wire.reply(call["response"])
    step = {"step_id": step_id, "timestamp": _iso(call["ts"]), "source": "agent",
            "model_name": call.get("model") or None, "message": reply.text}
    if reply.reasoning:
        step["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        _adopt_client_ids(reply.tool_calls, call["provider"], later)
        keys = [c["tool_call_id"] or c["function_name"] for c in reply.tool_calls]  # how its results are found
        found = _results_for(keys, call["provider"], later, traced)
        results = []
        for tool_call, key in zip(reply.tool_calls, keys):
            tool_call["tool_call_id"] = _unique(key or "call", used)
            if found.get(key):
                results.append({"source_call_id": tool_call["tool_call_id"], "content": found[key].pop(0)})
        step["tool_calls"] = reply.tool_calls
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


def _adopt_client_ids(tool_calls: list[dict], provider: str, later: list[dict]) -> None:
    """Calls the upstream sent without ids take the ids the client gave them, from the next request that replays
    this turn (the same tool names in the same order)."""
    if all(c["tool_call_id"] for c in tool_calls):
        return
    names = [c["function_name"] for c in tool_calls]
    for call in later:
        if call.get("provider") != provider or not isinstance(call.get("request"), dict):
            continue
        replayed = WIRES[provider].call_ids_in(call["request"])
        if [name for _, name in replayed] == names:
            for tool_call, (call_id, _) in zip(tool_calls, replayed):
                tool_call["tool_call_id"] = tool_call["tool_call_id"] or call_id
            return


def _results_for(keys: list[str], provider: str, later: list[dict], traced: dict[str, str]) -> dict[str, list[str]]:
    """key -> the outputs sent back for it, in order: from the first later request that carries any of them (its
    newest ones, where it replays older results under the same id), else from the trace."""
    wanted = {k: keys.count(k) for k in keys}
    for call in later:
        if call.get("provider") != provider or not isinstance(call.get("request"), dict):
            continue
        seen: dict[str, list[str]] = {}
        for call_id, content in WIRES[provider].tool_results(call["request"]):
            if call_id in wanted:
                seen.setdefault(call_id, []).append(content)
        if seen:
            return {k: v[-wanted[k]:] for k, v in seen.items()} | {
                k: [traced[k]] for k in wanted if k not in seen and k in traced}
    return {k: [traced[k]] for k in wanted if k in traced}


def _unique(call_id: str, used: set[str]) -> str:
    unique, n = call_id, 1
    while unique in used:
        n += 1
        unique = f"{call_id}#{n}"
    used.add(unique)
    return unique


def _tools_offered(calls: list[dict]) -> list[str]:
    """The tools the agent offered its model, from the requests of the answered calls."""
    names: set[str] = set()
    for call in calls:
        if call.get("provider") in WIRES and isinstance(call.get("request"), dict):
            names |= set(WIRES[call["provider"]].declared_tools(call["request"]))
    return sorted(names)


def _tool_steps(first_id: int, events: list[Event]) -> list[dict]:
    """An agent without a model: each tool call of the trace is a step with its result."""
    results = {e.call_id: e for e in events if e.kind == "tool_result"}
    steps, used = [], set()
    for event in events:
        if event.kind == "tool_call":
            call_id = _unique(event.call_id or event.tool or "call", used)
            step = {"step_id": first_id + len(steps), "timestamp": event.ts, "source": "agent", "message": "",
                    "tool_calls": [{"tool_call_id": call_id, "function_name": event.tool or "",
                                    "arguments": event.args or {}}]}
            if event.call_id and event.call_id in results:
                step["observation"] = {"results": [{"source_call_id": call_id,
                                                    "content": results.pop(event.call_id).text or ""}]}
            steps.append(step)
        elif event.kind == "assistant" and event.text:
            steps.append({"step_id": first_id + len(steps), "timestamp": event.ts, "source": "agent",
                          "message": event.text})
    return steps


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")
