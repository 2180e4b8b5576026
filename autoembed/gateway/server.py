"""The LLM gateway: one per trial (and one per loop for its meta-agent), the only endpoint a sandbox reaches.

    gateway = Gateway(run_dir, upstreams_from_env(), Limits(max_usd=5, deadline=deadline))
    gateway.start()                       # listens on <socket_dir>/gateway.sock (and 127.0.0.1:<port> with tcp=True)
    env = gateway.agent_env("http://127.0.0.1:8787")   # base URLs + the per-trial token, never a real key
    ...
    gateway.stop(); gateway.summary()     # calls, usage, cost, and which limit stopped the trial

Routes: /anthropic/<path>, /openai/<path>, /gemini/<path>; each prefix stands for that provider's upstream
base URL (what its SDK would use as base URL), so `/openai/chat/completions` goes to
`<OPENAI upstream>/chat/completions`. The OpenAI route serves any OpenAI-compatible server (vLLM, Ollama)
when its upstream is one. A request must carry the trial's token where its SDK sends a key (x-api-key,
Authorization: Bearer, x-goog-api-key or ?key=); the gateway puts the real key in its place.

Built on aiohttp (server and client, streaming, Unix sockets) rather than LiteLLM's proxy: we only pass
requests through, unchanged, to the provider the agent already speaks; LiteLLM's proxy translates between
APIs, pulls in a database-backed server and dozens of dependencies, and its pass-through routes would
still need our own accounting of streamed usage. aiohttp is one maintained dependency and the handler is
a page of code.

Least privilege: only the requests in autoembed.gateway.allow go out (generation, streaming, token counting,
model listing); any other path or method gets a 403 and a log row. A body over MAX_REQUEST_BYTES gets a 413
before more of it is read, and one that would take the bodies held at once past MAX_BODY_BYTES_IN_FLIGHT a 429.
A generation request for a model without a price (autoembed.llm.pricing; the user can give one) is refused, and one that is forwarded first reserves the most it can cost (autoembed.gateway.reserve:
its prompt by size plus its output cap, one set when it has none); a request whose reservation would pass the
dollar cap with what is spent and reserved already is refused, so concurrent calls cannot pass it together.

Every call is logged as it ends (gateway.jsonl: tokens, cache hits, cost, latency, status, refusals) with its
bodies beside it (gateway_bodies.jsonl: the request and the reply, streams folded into one body, each cut to
MAX_LOGGED_BODY_CHARS), on the host, outside the workdir. Limits: a dollar cap (reserved before, settled after),
a token cap on what has been answered, a per-call timeout and the trial's deadline. Past a cap a request gets a
403 in its API's error shape, which SDKs do not retry. Spend is the gateway's count only: summary()["usage"]
["cost_usd"] (what every call paid), with summary()["over_cap"] naming a cap the settled spend passed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from autoembed.gateway import allow
from autoembed.gateway.reserve import Refusal, Reservation, charge, reserve_for
from autoembed.gateway.sse import SSEReader
from autoembed.gateway.wire import WIRES, StreamFold, Wire
from autoembed.llm.pricing import PriceBook, prices_from_env
from autoembed.models import WIRE_BASE_URL, WIRE_CLIENT_KEY, WIRE_DEFAULT_BASE, WIRE_KEYS
from autoembed.trace import Usage

SOCKET_NAME = "gateway.sock"
MAX_SOCKET_PATH = 100  # a Unix socket path must fit in 108 bytes
DEFAULT_BASES, BASE_URL_ENV, KEY_ENV, AGENT_KEY_ENV = WIRE_DEFAULT_BASE, WIRE_BASE_URL, WIRE_KEYS, WIRE_CLIENT_KEY
# never forwarded: the client's credentials, and what belongs to one hop of HTTP
DROP_REQUEST = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding", "te",
                "upgrade", "proxy-authorization", "proxy-connection", "x-api-key", "authorization", "x-goog-api-key",
                "x-http-method-override", "x-http-method", "x-method-override"}  # the method is the allowlist's
DROP_RESPONSE = {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
CAPS = ("deadline", "max_usd", "max_tokens")
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # a request body past this is refused (413) before more of it is read
MAX_LOGGED_BODY_CHARS = 256 * 1024  # a request or reply body is logged up to this, then cut (and said so)
MAX_BODY_BYTES_IN_FLIGHT = 64 * 1024 * 1024  # request bodies held at once, all calls together; past it a 429
TOO_LARGE, BUSY = "too_large", "busy"


@dataclass
class Upstream:
    base_url: str
    key: str | None = None
    key_kind: str = "api_key"  # api_key | bearer | oauth (Anthropic only)


@dataclass
class Limits:
    max_usd: float | None = None  # estimated cost (autoembed.llm.pricing): what is spent plus what calls in flight reserved
    max_tokens: int | None = None  # all tokens reported: input, output, cache reads and writes
    call_timeout_s: float = 600.0  # one request, from arrival to the last byte of its reply
    deadline: float | None = None  # epoch seconds; no call is forwarded or continues past it


def upstreams_from_env(environ: dict[str, str] | None = None) -> dict[str, Upstream]:
    """The providers this host can reach: those with a key, or a base URL of their own (a local server)."""
    environ = os.environ if environ is None else environ
    found = {}
    for name, default in DEFAULT_BASES.items():
        key, kind = next(((environ[v], k) for v, k in KEY_ENV[name] if environ.get(v)), (None, "api_key"))
        base = environ.get(BASE_URL_ENV[name])
        if key or base:
            found[name] = Upstream(base or default, key, kind)
    return found


def socket_dir_for(run_dir: Path) -> Path:
    """<run_dir>/gateway, or a short folder under the system temp dir when that path is too long for a socket."""
    preferred = Path(run_dir) / "gateway"
    if len(str(preferred / SOCKET_NAME)) <= MAX_SOCKET_PATH:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    return Path(tempfile.mkdtemp(prefix="autoembed-gw-"))


@dataclass
class _Totals:
    calls: int = 0
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))
    unpriced_calls: int = 0  # answered calls whose model has no price (a model or list request the table lacks)
    reserved_usd: float = 0.0  # what the calls in flight may still cost
    reserved_tokens: int = 0  # and the tokens they may still use
    refused: Counter = field(default_factory=Counter)  # limit or reason -> refused requests
    timeouts: int = 0
    errors: int = 0


class Gateway:
    def __init__(self, log_dir: Path, upstreams: dict[str, Upstream], limits: Limits | None = None, *,
                 socket_dir: Path | None = None, tcp: bool = False, budget_name: str = "the trial's",
                 prices: PriceBook | None = None):
        """budget_name: whose caps its refusals name ("the trial's"; the loop's meta-agent gateway names --max-cost).
        prices: what calls are charged by (default: the table and the host's AUTOEMBED_PRICES)."""
        unknown = sorted(set(upstreams) - set(WIRES))
        if unknown:
            raise ValueError(f"unknown gateway provider(s) {unknown}: use {sorted(WIRES)}")
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / "gateway.jsonl"
        self.bodies_path = self.log_dir / "gateway_bodies.jsonl"
        self.upstreams = dict(upstreams)
        self.limits = limits or Limits()
        self.budget_name = budget_name
        self.prices = prices if prices is not None else PriceBook(prices_from_env())
        self.socket_dir = Path(socket_dir) if socket_dir else socket_dir_for(self.log_dir)
        self.token = "aegw-" + secrets.token_urlsafe(32)  # worthless anywhere but this gateway, for this trial
        self.tcp_port: int | None = None
        self.stopped_by: str | None = None  # the first cap that refused a request
        self.ended: float | None = None  # epoch seconds when its server stopped, however it stopped
        self._tcp = tcp
        self._totals = _Totals()
        self._bytes_held = 0  # request bodies read and not yet done with (the event loop's thread only)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- where it listens ---------------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        return self.socket_dir / SOCKET_NAME

    @property
    def tcp_url(self) -> str | None:
        return f"http://127.0.0.1:{self.tcp_port}" if self.tcp_port else None

    def agent_env(self, base_url: str) -> dict[str, str]:
        """What an agent receives: each reachable provider's base URL at the gateway and the trial's token
        in place of its key. The variable names are the ones the SDKs and CLIs read."""
        env = {}
        for name in self.upstreams:
            env[BASE_URL_ENV[name]] = f"{base_url.rstrip('/')}/{name}"
            env[AGENT_KEY_ENV[name]] = self.token
        if "openai" in self.upstreams:  # which server answers decides a request's shape (max_tokens or not)
            env["AUTOEMBED_OPENAI_UPSTREAM"] = self.upstreams["openai"].base_url
        return env

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "Gateway":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.chmod(0o755)
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self._close())
                loop.close()
            finally:
                self.ended = time.time()

        self._thread = threading.Thread(target=serve, name="llm-gateway", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the LLM gateway did not start within 30 s")
        if failure:
            raise RuntimeError(f"the LLM gateway could not start: {failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self.socket_path.unlink(missing_ok=True)

    def lost(self) -> str | None:
        """Why a started gateway no longer answers (its server ended, or its socket is gone), else None."""
        if self._thread is None:
            return None
        if self.ended is not None or not self._thread.is_alive():
            when = time.strftime("%H:%M:%S", time.gmtime(self.ended)) + " UTC" if self.ended else "an unknown time"
            return f"its server stopped at {when}"
        if not self.socket_path.exists():
            return f"its socket {self.socket_path} is gone"
        return None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), auto_decompress=True)
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{provider}/{tail:.*}", self._handle)
        # stop() comes after the sandbox is gone: calls still open have no one to answer, so do not wait long
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        self.socket_path.unlink(missing_ok=True)
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        self.socket_path.chmod(0o666)  # a sandbox's user (the host user's uid in docker) must connect
        if self._tcp:
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.tcp_port = site._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            if self._session is not None:
                await self._session.close()

    # -- the record ---------------------------------------------------------------------------------
    def summary(self) -> dict:
        """For meta.json: what the trial spent, by the gateway's own count, and which limit stopped it."""
        with self._lock:
            t = self._totals
            usage = vars(t.usage).copy()
            return {"log": str(self.log_path), "bodies": str(self.bodies_path), "calls": t.calls, "usage": usage,
                    "unpriced_calls": t.unpriced_calls, "errors": t.errors, "call_timeouts": t.timeouts,
                    "refused": dict(t.refused), "stopped_by": self.stopped_by, "reserved_usd": t.reserved_usd,
                    "over_cap": self._over_cap(), "limits": {k: v for k, v in vars(self.limits).items()},
                    "providers": sorted(self.upstreams)}

    def spent_usd(self) -> float:
        """Dollars spent by the gateway's count: what every finished call paid (the one figure callers sum)."""
        with self._lock:
            return self._totals.usage.cost_usd or 0.0

    def _over_cap(self) -> list[str]:
        """The caps the settled spend passed (a call that declared more than it reserved can do this)."""
        spent = self._totals.usage.cost_usd or 0.0
        return ["max_usd"] if self.limits.max_usd is not None and spent > self.limits.max_usd + 1e-9 else []

    def _cap_reached(self) -> tuple[str, str] | None:
        """(limit, message for the agent) when no further call may go out."""
        limits, t = self.limits, self._totals
        if limits.deadline is not None and time.time() >= limits.deadline:
            return "deadline", f"{self.budget_name} deadline has passed: no further model calls"
        if limits.max_usd is not None and (t.usage.cost_usd or 0.0) >= limits.max_usd:
            return "max_usd", (f"{self.budget_name} dollar budget is spent (${t.usage.cost_usd:.4f} of ${limits.max_usd:.2f}): "
                               "no further model calls; finish with what you have")
        used = _tokens(t.usage)
        if limits.max_tokens is not None and used >= limits.max_tokens:
            return "max_tokens", (f"{self.budget_name} token budget is spent ({used} of {limits.max_tokens} tokens): "
                                  "no further model calls; finish with what you have")
        return None

    def _reserve(self, reservation: Reservation) -> tuple[str, str] | None:
        """Hold the most this call can cost and use, or (limit, message) when that would pass the dollar or the
        token cap."""
        with self._lock:
            t, cap = self._totals, self.limits.max_usd
            spent = t.usage.cost_usd or 0.0
            if cap is not None and spent + t.reserved_usd + reservation.usd > cap:
                return "max_usd", (
                    f"{self.budget_name} dollar budget cannot cover this call: it may cost ${reservation.usd:.4f} "
                    f"({reservation.prompt_tokens} prompt tokens estimated, up to {reservation.max_output} output "
                    f"tokens of {reservation.model}), with ${spent:.4f} spent and ${t.reserved_usd:.4f} held by calls "
                    f"in flight, of ${cap:.2f}; ask for fewer output tokens, or finish with what you have")
            used, token_cap = _tokens(t.usage), self.limits.max_tokens
            if token_cap is not None and used + t.reserved_tokens + reservation.tokens > token_cap:
                return "max_tokens", (
                    f"{self.budget_name} token budget cannot cover this call: it may use {reservation.tokens} tokens "
                    f"({reservation.prompt_tokens} prompt tokens estimated, up to {reservation.max_output} output), "
                    f"with {used} used and {t.reserved_tokens} held by calls in flight, of {token_cap}; ask for fewer "
                    f"output tokens, or finish with what you have")
            t.reserved_usd += reservation.usd
            t.reserved_tokens += reservation.tokens
            return None

    def _log(self, record: dict, bodies: dict) -> None:
        bodies = {k: _capped(v) if k in ("request", "response") else v for k, v in bodies.items()}
        with self._lock:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record, ensure_ascii=False) + "\n")
            with open(self.bodies_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(bodies, ensure_ascii=False) + "\n")

    def _account(self, record: dict, usage: Usage | None, reservation: Reservation | None = None) -> None:
        with self._lock:
            t = self._totals
            if reservation is not None:
                t.reserved_usd = max(0.0, t.reserved_usd - reservation.usd)
                t.reserved_tokens = max(0, t.reserved_tokens - reservation.tokens)
            if usage is not None:
                t.calls += 1
                t.usage = t.usage + usage if usage.cost_usd is not None else t.usage + Usage(
                    usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens, 0.0)
                t.unpriced_calls += usage.cost_usd is None
            if record.get("refused"):
                t.refused[record["refused"]] += 1
            if record.get("refused") in CAPS:
                self.stopped_by = self.stopped_by or record["refused"]
            if record.get("limit") == "call_timeout":
                t.timeouts += 1
            elif record.get("error"):
                t.errors += 1

    # -- one request --------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started, t0 = time.time(), time.monotonic()
        name, tail = request.match_info["provider"], request.match_info["tail"]
        wire = WIRES.get(name)
        record = {"ts": started, "provider": name, "method": request.method, "path": "/" + tail}
        if wire is None or name not in self.upstreams:
            shown = wire or WIRES["openai"]
            return self._refuse(request, shown, record, 404, "unknown_provider",
                                f"this gateway serves {sorted(self.upstreams)}, not {name!r}", t0)
        if not self._authorized(request):
            return self._refuse(request, wire, record, 401, "invalid_token",
                                "the key is not this trial's gateway token", t0)
        kind = allow.allowed(name, request.method, tail)
        if kind is None:
            return self._refuse(request, wire, record, 403, "forbidden_path",
                                f"{request.method} /{name}/{tail} is not forwarded: this gateway passes on only "
                                f"generation, token counting and model listing ({allow.described(name)})", t0)
        with self._lock:
            cap = self._cap_reached()
        if cap is not None:
            return self._refuse(request, wire, record, 403, *cap, t0)
        raw = await self._read_body(request)
        if not isinstance(raw, bytes):
            status, reason, message = (413, "request_too_large", f"the request body is over the gateway's limit of "
                                                                 f"{MAX_REQUEST_BYTES} bytes") if raw == TOO_LARGE else \
                (429, "bodies_in_flight", f"the requests in flight already hold {MAX_BODY_BYTES_IN_FLIGHT} bytes of "
                                          "body at this gateway: wait for them to finish")
            refused = self._refuse(request, wire, record, status, reason, message, t0)
            out = web.StreamResponse(status=status, headers={"content-type": "application/json", "connection": "close"})
            await out.prepare(request)
            await out.write(refused.body)
            await out.write_eof()
            request.protocol.force_close()  # or aiohttp would read (and drop) the rest of the body before closing
            return out
        try:
            return await self._admit_and_forward(request, wire, name, tail, kind, raw, record, t0)
        finally:
            self._bytes_held -= len(raw)

    async def _admit_and_forward(self, request, wire: Wire, name: str, tail: str, kind: str, raw: bytes, record: dict,
                                 t0: float) -> web.StreamResponse:
        body = _json(raw)
        reservation = None
        if kind == allow.GENERATE:
            try:
                reservation = reserve_for(wire, tail, body, raw, self.prices)
            except Refusal as refusal:
                return self._refuse(request, wire, record, refusal.status, refusal.reason, refusal.message, t0)
            raw = reservation.body
            held = self._reserve(reservation)
            if held is not None:
                return self._refuse(request, wire, record, 403, *held, t0)
            record["reserved_usd"] = reservation.usd
        record["admit_s"] = round(time.monotonic() - t0, 6)  # token, allowlist, body, price and reservation checks
        body = body if isinstance(body, dict) else {}
        record["model"] = wire.model("/" + tail, body, {})
        record["stream"] = wire.is_stream("/" + tail, body)
        final, usage, out, finished = {}, None, None, False
        fold = wire.new_stream()  # outside the request: a stream cut short (timeout, client gone) still counts
        try:
            out, finished = await self._forward(request, wire, name, tail, raw, record, fold, t0)
        finally:  # whatever ended the call (the server stopping included), it pays and is logged
            final = record.pop("_final", None) or fold.final
            declared = None
            if final and record.get("status", 0) < 400:
                usage = wire.usage(final)
                model = wire.model("/" + tail, body, final)
                declared = self.prices.cost(model, usage, name)
                if declared is None:  # the reply names a model the request did not: the request's price
                    declared = self.prices.cost(record["model"], usage, name)
                usage.cost_usd = declared
                record["model"] = model or record["model"]
            # a reply that declares no usage (an OpenAI stream without include_usage) cannot be settled: it pays its
            # reservation, as a call that did not finish does; a refusal by the provider (an error status) costs nothing
            settled = finished and (record.get("status", 0) >= 400 or wire.declares_usage(final or {}))
            paid = charge(reservation, declared, settled)
            if reservation is not None and (usage is not None or paid):
                usage = usage or Usage(cost_usd=0.0)
                if paid != (declared or 0.0):
                    record["declared_cost_usd"] = declared
                usage.cost_usd = paid
            if usage is not None:
                record["usage"] = vars(usage)
            record["latency_s"] = round(time.monotonic() - t0, 4)
            self._account(record, usage, reservation)
            self._log(record, {**record, "request": body, "response": final or None})
        return out

    async def _forward(self, request, wire: Wire, name: str, tail: str, raw: bytes, record: dict, fold: StreamFold,
                       t0: float) -> tuple[web.StreamResponse, bool]:
        """Send the request upstream with the real key and relay the reply; (response, whether it finished)."""
        upstream = self.upstreams[name]
        url = upstream.base_url.rstrip("/") + "/" + tail
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
        if upstream.key:
            headers.update(wire.auth_headers(upstream.key, upstream.key_kind))
        query = [(k, v) for k, v in request.query.items() if k != "key"]
        timeout = self.limits.call_timeout_s
        if self.limits.deadline is not None:
            timeout = max(0.001, min(timeout, self.limits.deadline - time.time()))
        out: web.StreamResponse | None = None
        try:
            async with self._session.request(request.method, url, params=query, headers=headers, data=raw or None,
                                             timeout=aiohttp.ClientTimeout(total=timeout),
                                             allow_redirects=False) as resp:
                record["status"] = resp.status
                record["ttfb_s"] = round(time.monotonic() - t0, 4)
                passed = {k: v for k, v in resp.headers.items() if k.lower() not in DROP_RESPONSE}
                if resp.content_type == "text/event-stream":
                    out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=passed)
                    client_here = await self._relay_stream(request, resp, out, fold)
                    if client_here:
                        await out.write_eof()
                    else:
                        record["client_gone"] = True
                    return out, client_here
                data = await resp.read()
                record["_final"] = _fold_json(wire, _json(data))
                return web.Response(status=resp.status, reason=resp.reason, headers=passed, body=data), True
        except asyncio.TimeoutError:
            limit = "deadline" if self.limits.deadline is not None and time.time() >= self.limits.deadline - 0.01 \
                else "call_timeout"
            record.update(limit=limit, error=f"no complete reply within {timeout:.1f} s")
            return out or self._error_response(wire, 504, limit, f"the gateway's {limit.replace('_', ' ')} "
                                                                 f"({timeout:.0f} s) passed before the provider "
                                                                 f"answered"), False
        except (aiohttp.ClientError, OSError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            never_sent = isinstance(exc, aiohttp.ClientConnectorError)  # nothing reached the provider: nothing to pay
            return out or self._error_response(wire, 502, "upstream_unreachable", f"the gateway could not reach "
                                                                                  f"{name}: {type(exc).__name__}"), \
                never_sent

    async def _read_body(self, request: web.Request) -> bytes | str:
        """The body (its bytes counted in _bytes_held until the caller releases them), or TOO_LARGE as soon as it is
        known to be over MAX_REQUEST_BYTES, or BUSY when the requests in flight hold MAX_BODY_BYTES_IN_FLIGHT: many
        connections each sending just under the limit must not add up to the host's memory."""
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return TOO_LARGE
        chunks, size = [], 0
        try:
            while True:
                chunk = await request.content.read(64 * 1024)
                if not chunk:
                    raw, size = b"".join(chunks), 0  # the caller releases it now
                    return raw
                if size + len(chunk) > MAX_REQUEST_BYTES:
                    return TOO_LARGE
                if self._bytes_held + len(chunk) > MAX_BODY_BYTES_IN_FLIGHT:
                    return BUSY
                size += len(chunk)
                self._bytes_held += len(chunk)  # only this event loop's thread touches it
                chunks.append(chunk)
        finally:
            self._bytes_held -= size

    async def _relay_stream(self, request: web.Request, resp: aiohttp.ClientResponse, out: web.StreamResponse,
                            fold: StreamFold) -> bool:
        """Pass every byte on as it arrives; fold a parsed copy of the events for the record. A client that goes
        away does not end the call: the rest is read (within the call's timeout) for the usage it declares.
        Returns whether the client took the whole stream."""
        reader = SSEReader()
        client_here = True
        try:
            await out.prepare(request)
        except (ConnectionError, RuntimeError):
            client_here = False
        try:
            async for chunk in resp.content.iter_any():
                if client_here:
                    try:
                        await out.write(chunk)
                    except (ConnectionError, RuntimeError):  # the client closed its end
                        client_here = False
                for event, data in reader.feed(chunk):
                    fold.feed(event, data)
        finally:
            for event, data in reader.close():
                fold.feed(event, data)
        return client_here

    def _authorized(self, request: web.Request) -> bool:
        offered = [request.headers.get("x-api-key"), request.headers.get("x-goog-api-key"), request.query.get("key")]
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        return any(v and hmac.compare_digest(v.encode(), self.token.encode()) for v in offered)

    def _refuse(self, request, wire: Wire, record: dict, status: int, reason: str, message: str, t0: float) -> web.Response:
        record.update(status=status, refused=reason, error=message, latency_s=round(time.monotonic() - t0, 4))
        self._account(record, None)
        self._log(record, {**record, "request": None, "response": None})
        return self._error_response(wire, status, reason, message)

    @staticmethod
    def _error_response(wire: Wire, status: int, kind: str, message: str) -> web.Response:
        return web.json_response(wire.error(status, kind, f"autoembed gateway: {message}"), status=status)


def _tokens(usage: Usage) -> int:
    return usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens


def _json(raw: bytes):
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _capped(body):
    """A body for the log: whole when its JSON is at most MAX_LOGGED_BODY_CHARS, else its conversation's last turns
    that fit (what the trajectory reads: the tool results a request carries back), or its start, said to be cut."""
    if body is None:
        return None
    text = json.dumps(body, ensure_ascii=False)
    if len(text) <= MAX_LOGGED_BODY_CHARS:
        return body
    cut = {"_cut": f"{len(text)} characters, over the log's {MAX_LOGGED_BODY_CHARS}: only the last turns kept"}
    if isinstance(body, dict):
        kept = {k: v for k, v in body.items() if k in ("model", "stream", "max_tokens", "max_completion_tokens",
                                                        "max_output_tokens", "usage", "usageMetadata", "modelVersion")}
        for key in ("messages", "contents", "input"):
            if isinstance(body.get(key), list):
                tail, size = [], len(json.dumps(kept))
                for item in reversed(body[key]):
                    size += len(json.dumps(item, ensure_ascii=False))
                    if size > MAX_LOGGED_BODY_CHARS // 2:
                        break
                    tail.insert(0, item)
                kept[key] = tail
        if len(json.dumps(kept, ensure_ascii=False)) <= MAX_LOGGED_BODY_CHARS:
            return {**cut, **kept}
    return {"_cut": f"{len(text)} characters, over the log's {MAX_LOGGED_BODY_CHARS}: only its start kept",
            "head": text[:MAX_LOGGED_BODY_CHARS // 2]}


def _fold_json(wire: Wire, payload) -> dict:
    """A reply body as one dict; Gemini's streamGenerateContent without alt=sse sends a JSON array of chunks."""
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, list):
        fold = wire.new_stream()
        for item in payload:
            if isinstance(item, dict):
                fold.feed(None, item)
        return fold.final
    return {}
