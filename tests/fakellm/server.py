"""The fake server's core: an HTTP server on 127.0.0.1, a script of turns, a queue of faults.

Protocol modules (anthropic.py, openai.py, gemini.py) register routes with @route and turn the
next scripted Turn into their wire format (JSON or SSE). Test code only: never imported by autoembed.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Turn:
    """One scripted model reply: text, tool calls, or both."""

    text: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input_tokens: int = 11
    output_tokens: int = 7
    cache_read_tokens: int = 0  # prompt tokens served from the provider's cache (reported on top of input_tokens)


@dataclass
class Fault:
    """Injected before the next reply: an HTTP status (with optional retry-after), a hang, or a drop."""

    kind: str  # "status" | "hang" | "drop"
    status: int = 500
    retry_after: float | None = None
    seconds: float = 30.0  # for hang
    body: dict | None = None


Route = Callable[["FakeLLM", BaseHTTPRequestHandler, re.Match, dict], None]
ROUTES: list[tuple[str, re.Pattern, Route]] = []


def route(method: str, pattern: str):
    def register(fn: Route) -> Route:
        ROUTES.append((method, re.compile(pattern), fn))
        return fn

    return register


class FakeLLM:
    """Usage: with FakeLLM([Turn(tool_calls=[("Bash", {"command": "ls"})]), Turn(text="done")]) as fake: fake.url"""

    def __init__(self, script: list[Turn] | Callable[[dict], Turn] | None = None, faults: list[Fault] | None = None,
                 final_text: str = "Done."):
        self.script = script if script is not None else []
        self.faults = list(faults or [])
        self.final_text = final_text
        self.requests: list[dict] = []  # {"method", "path", "headers", "body"}
        self.fault_log: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- script -------------------------------------------------------------------------------
    def next_turn(self, body: dict) -> Turn:
        with self._lock:
            if callable(self.script):
                return self.script(body)
            if self.script:
                return self.script.pop(0)
            return Turn(text=self.final_text)

    def next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    # -- server -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeLLM":
        from tests.fakellm import protocols  # noqa: F401  (registers routes)

        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # quiet
                pass

            def _dispatch(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                path = self.path.split("?", 1)[0]
                fake.requests.append({"method": method, "path": self.path, "headers": dict(self.headers), "body": body})
                fault = fake.next_fault()
                if fault is not None and fake._inject(self, fault):
                    return
                for m, pattern, fn in ROUTES:
                    match = pattern.fullmatch(path)
                    if m == method and match:
                        fn(fake, self, match, body)
                        return
                send_json(self, 404, {"error": {"message": f"fake server: no route for {method} {path}"}})

            def do_POST(self):
                self._dispatch("POST")

            def do_GET(self):
                self._dispatch("GET")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _inject(self, handler: BaseHTTPRequestHandler, fault: Fault) -> bool:
        self.fault_log.append(fault.kind if fault.kind != "status" else str(fault.status))
        if fault.kind == "status":
            headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
            send_json(handler, fault.status, fault.body or {"error": {"message": f"injected {fault.status}"}}, headers)
            return True
        if fault.kind == "hang":
            time.sleep(fault.seconds)
            handler.close_connection = True
            return True
        if fault.kind == "drop":
            handler.close_connection = True
            try:
                handler.connection.shutdown(2)
            except OSError:
                pass
            return True
        raise ValueError(f"unknown fault {fault.kind}")


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)


def send_sse(handler: BaseHTTPRequestHandler, events: list[tuple[str | None, dict]]) -> None:
    """Server-sent events: (event name or None, data) pairs, then close."""
    chunks = []
    for name, data in events:
        prefix = f"event: {name}\n" if name else ""
        chunks.append(f"{prefix}data: {json.dumps(data)}\n\n")
    send_sse_frames(handler, chunks)


def send_sse_frames(handler: BaseHTTPRequestHandler, frames: list[str]) -> None:
    """Already formatted server-sent event frames, then close."""
    payload = "".join(frames).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Content-Length", str(len(payload)))
    handler.send_header("Connection", "close")  # said, not only done: a client must not reuse this connection
    handler.end_headers()
    handler.wfile.write(payload)
    handler.close_connection = True
