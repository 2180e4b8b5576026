"""The audit's chaos upstream: a local HTTP server on the Anthropic Messages wire that the trial's own gateway
forwards to (ANTHROPIC_BASE_URL), answering each call from a fixed plan of faults and replies.

Why it lives in the product: `autoembed audit` must inject LLM API faults (429, 529 overloaded, a call that
hangs past the gateway's timeout, a connection dropped mid-response) into a real trial on any machine, without a
key or the network, and the only place they can come from is the upstream the gateway talks to. It is no
stand-in for a vendor: it knows one endpoint, answers only from the plan it is given, and records what reached
it (so the audit can check that the gateway, not the agent, held the key). The tests keep their own fake
servers (tests/fakellm).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "529", "hang", "drop")


class ChaosUpstream:
    """plan: a list of {"fault": one of FAULTS} or {"text": str?, "tool_calls": [{"name", "arguments"}]?, "usage"?}
    items, one per call in order; past its end every call gets a final text. hang_s: how long a "hang" call waits.
    seen: per call, what it got, the key and the messages it arrived with, and the tool_use ids it was answered with."""

    def __init__(self, plan: list[dict], hang_s: float = 60.0):
        self.plan = list(plan)
        self.hang_s = hang_s
        self.seen: list[dict] = []  # per call: the fault or "reply", and the key it arrived with
        self.hanging = threading.Event()  # set when a "hang" call begins: the agent is waiting on its model
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> "ChaosUpstream":
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the audit records what it needs in upstream.seen
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with upstream._lock:
                    item = dict(upstream.plan.pop(0) if upstream.plan else {"text": "Done."})
                    item["ids"] = [f"toolu_{uuid.uuid4().hex[:20]}" for _ in item.get("tool_calls", [])]
                    upstream.seen.append({"what": item.get("fault", "reply"), "key": self.headers.get("x-api-key"),
                                          "path": self.path, "messages": body.get("messages"), "tool_uses": item["ids"]})
                upstream._answer(self, item, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, handler, item: dict, body: dict) -> None:
        fault = item.get("fault")
        if fault == "429":
            return _send(handler, 429, {"type": "error", "error": {"type": "rate_limit_error",
                                                                  "message": "chaos: rate limited"}}, {"retry-after": "1"})
        if fault == "529":
            return _send(handler, 529, {"type": "error", "error": {"type": "overloaded_error", "message": "chaos: overloaded"}})
        if fault == "hang":
            self.hanging.set()
            time.sleep(self.hang_s)
            handler.close_connection = True
            return None
        content = [{"type": "text", "text": item["text"]}] if item.get("text") else []
        content += [{"type": "tool_use", "id": use_id, "name": call["name"], "input": call.get("arguments", {})}
                    for use_id, call in zip(item["ids"], item.get("tool_calls", []))]
        message = {"id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant",
                   "model": body.get("model", "chaos"), "content": content,
                   "stop_reason": "tool_use" if item.get("tool_calls") else "end_turn", "stop_sequence": None,
                   "usage": item.get("usage") or {"input_tokens": 100, "output_tokens": 20}}
        if fault == "drop":  # the status and half the body, then the connection closes
            raw = json.dumps(message).encode()
            handler.send_response(200)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(raw)))
            handler.end_headers()
            handler.wfile.write(raw[: len(raw) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return None
        return _send(handler, 200, message)


def _send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
    raw = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(raw)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(raw)
