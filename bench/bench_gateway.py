"""The LLM gateway's cost: latency it adds per call, and throughput under 50 concurrent streaming calls, as a ratio
to calling the fake server directly in the same run.

    python bench/bench_gateway.py [--calls 300] [--concurrency 50] [--streams 1000] [--no-write]

Three processes, as in a trial: the fake server (tests/fakellm), the gateway (autoembed.gateway, its own process
here so the client's work does not share its interpreter), and this client (aiohttp). Paths compared, with the
same client and requests, interleaved so that drift hits all alike:
  direct    client -> fake server
  gateway   client -> forwarder (127.0.0.1, the sandbox side) -> Unix socket -> gateway -> fake server
Latency: sequential non-streaming Chat Completions calls, median and p95. Throughput: `--streams` streaming calls
(stream=true, usage in the last event) with `--concurrency` in flight at once; a call fails unless it returns 200
and its stream ends with [DONE]. Writes the section "LLM gateway overhead" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## LLM gateway overhead (this machine, CPU)"
BODY = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi " * 200}]}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}

FAKE = """
import sys, time
from http.server import ThreadingHTTPServer
from tests.fakellm import FakeLLM, Turn
ThreadingHTTPServer.request_queue_size = 1024  # the stdlib's 5 would refuse a burst of 50 connections
fake = FakeLLM(lambda body: Turn(text="a reply of a few words " * 8, input_tokens=200, output_tokens=40)).start()
print(fake.url, flush=True)
time.sleep(1e9)
"""
GATEWAY = """
import sys, time
from pathlib import Path
from autoembed.gateway.server import Gateway, Upstream
gateway = Gateway(Path(sys.argv[1]), {"openai": Upstream(sys.argv[2] + "/v1", "sk-bench")}).start()
print(gateway.socket_path, gateway.token, flush=True)
time.sleep(1e9)
"""


def start(code: str, *args: str) -> tuple[subprocess.Popen, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    return proc, proc.stdout.readline().split()


async def one_call(session: aiohttp.ClientSession, url: str, headers: dict) -> float:
    t0 = time.perf_counter()
    async with session.post(url, json=BODY, headers=headers) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    return time.perf_counter() - t0


async def one_stream(session: aiohttp.ClientSession, url: str, headers: dict) -> bool:
    try:
        async with session.post(url, json=STREAM_BODY, headers=headers) as resp:
            data = await resp.read()
            return resp.status == 200 and data.rstrip().endswith(b"data: [DONE]")
    except aiohttp.ClientError:
        return False


async def measure(paths: dict[str, tuple[str, dict]], calls: int, streams: int, concurrency: int) -> dict:
    out = {name: {"latency": [], "ok": 0, "failed": 0, "seconds": 0.0} for name in paths}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:
        for name, (url, headers) in paths.items():  # warm-up: connections, imports, caches
            for _ in range(5):
                await one_call(session, url, headers)
        for _ in range(calls):
            for name, (url, headers) in paths.items():
                out[name]["latency"].append(await one_call(session, url, headers))
        rounds = 4  # the throughput runs alternate too, a quarter of the streams at a time
        for _ in range(rounds):
            for name, (url, headers) in paths.items():
                gate = asyncio.Semaphore(concurrency)

                async def bounded():
                    async with gate:
                        return await one_stream(session, url, headers)

                t0 = time.perf_counter()
                results = await asyncio.gather(*(bounded() for _ in range(streams // rounds)))
                out[name]["seconds"] += time.perf_counter() - t0
                out[name]["ok"] += sum(results)
                out[name]["failed"] += len(results) - sum(results)
    return out


def forwarder(socket_path: str) -> tuple[subprocess.Popen, int]:
    source = (ROOT / "autoembed" / "sandbox" / "forwarder.py").read_text()
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", source, "127.0.0.1", "0", socket_path],
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline().split()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    procs = []
    try:
        fake, (fake_url,) = start(FAKE)
        procs.append(fake)
        run_dir = Path(tempfile.mkdtemp(prefix="bench-gw-"))
        gateway, (socket_path, token) = start(GATEWAY, str(run_dir), fake_url)
        procs.append(gateway)
        fwd, port = forwarder(socket_path)
        procs.append(fwd)
        paths = {"direct": (f"{fake_url}/v1/chat/completions", {"authorization": "Bearer sk-bench"}),
                 "gateway": (f"http://127.0.0.1:{port}/openai/chat/completions", {"authorization": f"Bearer {token}"})}
        result = asyncio.run(measure(paths, args.calls, args.streams, args.concurrency))
        rows_logged = [json.loads(line) for line in open(run_dir / "gateway.jsonl")]
        logged = len(rows_logged)
        inside = sorted(r["latency_s"] for r in rows_logged if not r.get("stream"))
        print(f"the gateway's own time per non-streaming call (median): {1000 * statistics.median(inside):.2f} ms")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    rows = {}
    for name, r in result.items():
        lat = sorted(r["latency"])
        rows[name] = {"median_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
                      "calls_per_s": r["ok"] / r["seconds"], "ok": r["ok"], "failed": r["failed"]}
    added = rows["gateway"]["median_ms"] - rows["direct"]["median_ms"]
    ratio = rows["gateway"]["calls_per_s"] / rows["direct"]["calls_per_s"]
    print(json.dumps({"rows": rows, "added_ms": added, "throughput_ratio": ratio, "logged": logged}, indent=1))
    if not args.no_write:
        write(rows, added, ratio, args, logged)
    return 0 if rows["gateway"]["failed"] == 0 and rows["direct"]["failed"] == 0 else 1


def write(rows: dict, added: float, ratio: float, args, logged: int) -> None:
    load = os.getloadavg()[0]
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} CPUs, "
             f"load average {load:.1f} at the end, shared with other jobs) by "
             f"`python bench/bench_gateway.py --calls {args.calls} --streams {args.streams} "
             f"--concurrency {args.concurrency}`. *gateway* is the path a sandboxed agent takes: the forwarder on "
             "127.0.0.1 -> the Unix socket -> the gateway (aiohttp, its own process) -> the fake server; *direct* is "
             "the same client calling the fake server. Latency: sequential non-streaming Chat Completions calls; "
             f"throughput: {args.streams} streaming calls, {args.concurrency} in flight.", "",
             "| path | median ms | p95 ms | streaming calls/s | ok | failed |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['calls_per_s']:.0f} | {r['ok']} | "
                     f"{r['failed']} |")
    lines += ["", f"Added per call: **{added:.2f} ms** (median, goal < 5 ms). Throughput through the gateway: "
                  f"**{ratio:.2f}×** the direct rate. Every call the gateway answered was logged ({logged} rows).", ""]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        tail = rest.split("\n## ", 1)
        text = head + "\n".join(lines) + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
