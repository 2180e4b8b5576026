"""A warm evaluator for the agent's task.py: one process inside the sandbox that keeps torch, CUDA, the dev
tasks and their token ids loaded, so `task.evaluate` from a new process costs the scoring, not 15 s of imports
and CUDA start.

The first task.evaluate() starts it (`python -m autoembed.task.warm_eval serve SOCKET`, its own session, beside
the agent's processes in the same sandbox: it never runs on the host) and waits for it; later calls, from any
process, send their request over a unix socket in the workdir's .cache/ and get the result that
autoembed.task.evaluate.evaluate_model gives in-process (the same function on the same inputs: the same numbers).
It exits after AUTOEMBED_WARM_EVAL_IDLE_S seconds without a request (default 900) and frees its memory.
It runs only inside a sandbox (the workdir mounted at /workdir, as bwrap and Docker mount it), never beside the
harness on the host (the `none` sandbox, tests): AUTOEMBED_WARM_EVAL=1 asks for it anywhere, =0 turns it off
(every call then scores in its own process, as before). Whatever goes wrong on this path (no server, a server
that dies, an error), the caller scores in its own process, which also raises the real error.

The client half imports only the standard library (the point is not to import torch).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

IDLE_S = float(os.environ.get("AUTOEMBED_WARM_EVAL_IDLE_S", "900"))
START_TIMEOUT_S = 180.0  # a cold start on a loaded CPU machine; past it the caller scores in its own process
MAX_REPLY_BYTES = 64 << 20


SANDBOX_WORKDIR = Path("/workdir")  # where bwrap and Docker mount the workdir (autoembed.sandbox.*.WORKDIR_INSIDE)


def enabled(workdir: Path) -> bool:
    """Whether task.py in workdir uses the warm evaluator: inside a sandbox, or where AUTOEMBED_WARM_EVAL=1."""
    asked = os.environ.get("AUTOEMBED_WARM_EVAL", "")
    if asked in ("0", "1"):
        return asked == "1"
    return Path(workdir) == SANDBOX_WORKDIR


# ---------------------------------------------------------------------------------------------
# Client (standard library only)
# ---------------------------------------------------------------------------------------------


def evaluate(request: dict, socket_path: Path, start: bool = True) -> dict | None:
    """The server's reply to request ({"ok", "result", "table"} or {"ok": False, "error"}), starting the server
    first when none answers and start is true; None when no server could be reached."""
    socket_path = Path(socket_path)
    if len(os.fsencode(socket_path)) > 100:  # AF_UNIX paths are capped at 108 bytes
        return None
    reply = _ask(socket_path, request)
    if reply is not None or not start:
        return reply
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with open(socket_path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; a second caller finds the first one's server
        if not _answers(socket_path):
            if not _start(socket_path):
                return None
    return _ask(socket_path, request)


def _connect(socket_path: Path, timeout: float | None) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path))
        return sock
    except OSError:
        sock.close()
        return None


def _answers(socket_path: Path) -> bool:
    sock = _connect(socket_path, 2.0)
    if sock is None:
        return False
    sock.close()
    return True


def _ask(socket_path: Path, request: dict) -> dict | None:
    sock = _connect(socket_path, 5.0)
    if sock is None:
        return None
    try:
        sock.settimeout(None)  # scoring takes what it takes (minutes on a CPU's full sets)
        sock.sendall(json.dumps(request).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        data = _read_all(sock)
    except OSError:
        return None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        return None  # the server died mid-request
    return reply if isinstance(reply, dict) else None


def _read_all(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise OSError("reply too large")
        chunks.append(chunk)


def _start(socket_path: Path) -> bool:
    log = open(socket_path.with_suffix(".log"), "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "autoembed.task.warm_eval", "serve", str(socket_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    except OSError:
        return False
    finally:
        log.close()
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            return _answers(socket_path)  # it exited: another one may have won the race
        if _answers(socket_path):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------


def _stamp(folder: Path) -> tuple:
    """What decides whether a cached copy of a folder's contents is still current."""
    return tuple(sorted((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file() for st in [p.stat()]))


class Evaluator:
    """Scores requests as task.py's in-process path does, keeping the dev tasks and the last model loaded."""

    def __init__(self):
        from autoembed.task import evaluate as evaluator  # torch, sentence-transformers: paid once

        self.evaluator = evaluator
        self._tasks: dict = {}
        self._model = None  # (path, stamp, model)

    def dev_tasks(self, dev_dir: str, names: list[str], fast: bool | None, n_queries: int, n_docs: int) -> dict:
        """task.py's load_dev_tasks(fast, only), with each task kept while its files are unchanged."""
        from autoembed.task.data import load_retrieval_task

        fast = self.evaluator.default_fast() if fast is None else fast
        out = {}
        for name in names:
            folder = Path(dev_dir) / name
            key = (str(folder), name, fast, n_queries, n_docs)
            stamp = _stamp(folder)
            cached = self._tasks.get(key)
            if cached is None or cached[0] != stamp:
                task = load_retrieval_task(folder, name)
                cached = self._tasks[key] = (stamp, task.subset(n_queries, n_docs) if fast else task)
            out[name] = cached[1]
        return out

    def model(self, path: str):
        folder = Path(path)
        if not folder.is_dir():
            return path  # evaluate_model raises the error the in-process path raises
        stamp = _stamp(folder)
        if self._model is None or self._model[:2] != (path, stamp):
            self._model = None
            self._model = (path, stamp, self.evaluator.load_model(path))
        return self._model[2]

    def handle(self, request: dict) -> dict:
        names = [n for n in request["dev_tasks"] if not request.get("only") or n in request["only"]]
        tasks = self.dev_tasks(request["dev_dir"], names, request.get("fast"), request["fast_queries"],
                               request["fast_docs"])
        result = self.evaluator.evaluate_model(self.model(request["model_path"]), tasks,
                                               cache_dir=Path(request["cache_dir"]),
                                               max_seq_length=request["max_seq_length"])
        return {"ok": True, "result": result, "table": self.evaluator.format_table(result)}


def serve(socket_path: Path, idle_s: float = IDLE_S) -> int:
    socket_path = Path(socket_path)
    if _answers(socket_path):
        return 0  # one is already serving this workdir
    evaluator = Evaluator()
    try:
        socket_path.unlink()
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    server.listen(16)
    server.settimeout(idle_s)
    print(f"[warm_eval] serving {socket_path} (pid {os.getpid()}, idle exit after {idle_s:.0f}s)", flush=True)
    try:
        while True:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                print("[warm_eval] idle: exiting", flush=True)
                return 0
            with conn:
                conn.settimeout(60.0)
                try:
                    request = json.loads(_read_all(conn))
                    started = time.perf_counter()
                    try:
                        reply = evaluator.handle(request)
                    except Exception as exc:  # the caller falls back to its own process, which raises it
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    print(f"[warm_eval] {request.get('model_path')}: {'ok' if reply['ok'] else reply['error']} "
                          f"in {time.perf_counter() - started:.2f}s", flush=True)
                    conn.sendall(json.dumps(reply).encode())
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    print(f"[warm_eval] bad request: {exc}", flush=True)
    finally:
        server.close()
        try:
            socket_path.unlink()
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        raise SystemExit("usage: python -m autoembed.task.warm_eval serve SOCKET_PATH")
    raise SystemExit(serve(Path(sys.argv[2])))
