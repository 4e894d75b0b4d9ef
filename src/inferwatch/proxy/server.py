"""The reverse proxy: an asyncio protocol per client connection, httptools on both sides.

No framework sits between the sockets and the forwarding: measured against aiohttp, uvicorn
and granian based proxies, this is what keeps up with nginx (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

import httptools
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from inferwatch.metrics import InferenceMetrics
from inferwatch.proxy.routes import BAD_REQUEST, Route, classify, split_target
from inferwatch.proxy.upstream import UpstreamConnection, UpstreamPool

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself.
_REQUEST_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
    b"content-length", b"expect", b"x-forwarded-for",
})
_RESPONSE_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_MAX_PIPELINED = 8
_UPSTREAM_STATUS = {"upstream_connect": 502, "upstream_timeout": 504}


@dataclass(frozen=True)
class ProxyConfig:
    """Where the proxy listens, the one upstream it forwards to, and its limits.

    >>> ProxyConfig("http://127.0.0.1:8080", models=["digits"]).port
    8090
    """

    upstream: str
    host: str = "127.0.0.1"
    port: int = 8090
    models: Mapping[str, str] | Sequence[str] = ()
    default_model: str | None = None
    """Model of the seed's ``POST /infer`` route; the first model when not given."""
    timeout: float = 60.0
    """Longest wait for the upstream's next byte (before the head and between chunks)."""
    connect_timeout: float = 5.0
    max_body_bytes: int = 4 << 20
    max_header_bytes: int = 64 << 10
    max_idle_connections: int = 256
    client_timeout: float = 75.0
    """Idle keep-alive client connections, and clients that stall mid-request, are closed."""
    latency_buckets: Sequence[float] | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {self.upstream!r}")
        if parts.query or parts.fragment:
            raise ValueError("upstream URL must not have a query or fragment")
        for name in ("timeout", "connect_timeout", "client_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_body_bytes < 0 or self.max_header_bytes < 1024:
            raise ValueError("max_body_bytes must be >= 0 and max_header_bytes >= 1024")


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ProxyServer:
    """An instrumented reverse proxy in front of one inference server.

    >>> from prometheus_client import CollectorRegistry
    >>> proxy = ProxyServer(ProxyConfig("http://127.0.0.1:8080", models=["digits"]),
    ...                     CollectorRegistry())
    >>> proxy.metrics.model_label("digits"), proxy.metrics.model_label("other")
    ('digits', '_unknown')

    ``await proxy.start()`` listens on ``config.host:config.port`` (0 picks a free port, read
    back from ``proxy.port``); ``await proxy.close()`` stops it. ``proxy.run()`` does both
    around a wait for SIGINT or SIGTERM, on uvloop when it is installed.
    """

    def __init__(self, config: ProxyConfig, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()
        self.config = config
        self.registry = registry if registry is not None else _registry()
        kwargs = {"latency_buckets": config.latency_buckets} if config.latency_buckets else {}
        self.metrics = InferenceMetrics(config.models, registry=self.registry, **kwargs)
        self.default_model = config.default_model or next(iter(self.metrics.models), None)
        parts = urlsplit(config.upstream)
        self.upstream_host = parts.hostname or ""
        self.upstream_port = parts.port or 80
        self.host_header = parts.netloc.rsplit("@", 1)[-1].encode()
        self.prefix = parts.path.rstrip("/").encode()
        self.port = config.port
        self.pool: UpstreamPool | None = None
        self.clients: set[ClientConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(self.upstream_host, self.upstream_port,
                                 connect_timeout=self.config.connect_timeout,
                                 max_idle=self.config.max_idle_connections, loop=loop)
        self._server = await loop.create_server(
            lambda: ClientConnection(self, loop), self.config.host, self.config.port,
            backlog=1024, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.close()
        if self.pool is not None:
            self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.start()
            try:
                await stop.wait()
            finally:
                await self.close()

        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
            return
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())


def _json_body(status: int, reason: str, message: str) -> bytes:
    return json.dumps({"code": status, "error": reason, "message": message},
                      separators=(",", ":")).encode()


class _Exchange:
    """One request: received from a client, maybe forwarded, answered exactly once."""

    __slots__ = (
        "body", "chunked", "client", "close_after", "counted", "done", "first_byte", "gauge",
        "headers", "held", "http11", "keep_alive", "method", "model", "path", "pending",
        "query", "request", "retried", "route", "start", "status", "streamed", "timer",
        "up_close", "up_end", "up_sent", "up_start", "upstream", "wrote",
    )

    def __init__(self, client: ClientConnection, route: Route, method: bytes, path: bytes,
                 query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.client = client
        self.route = route
        self.model = route.model
        self.counted = route.counted
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = b""
        self.keep_alive = True
        self.http11 = True
        self.close_after = False
        self.start = time.perf_counter()
        self.gauge: Any = None
        self.done = False
        self.status = 0
        self.pending: bytes | None = None  # for the client, not written yet: head, body bytes
        self.held = False  # whether ``pending`` holds body bytes
        self.wrote = False
        self.chunked = False
        self.streamed = False
        self.first_byte: float | None = None
        self.request = b""
        self.retried = False
        self.upstream: UpstreamConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.up_start = 0.0
        self.up_end = 0.0
        self.up_sent = 0.0
        self.up_close = False

    @property
    def active(self) -> bool:
        return not self.done

    # -- the upstream's response, from UpstreamConnection

    def upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
        length = chunked = False
        for name, value in headers:
            low = name.lower()
            if low in _RESPONSE_DROP:
                chunked = chunked or (low == b"transfer-encoding" and b"chunked" in value.lower())
                continue
            if low == b"content-length":
                length = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if not length and status not in (204, 304) and status >= 200:
            self.streamed = True
            self.up_close = not chunked  # the body ends when the upstream closes
            if self.http11:
                self.chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True  # an HTTP/1.0 client reads to the close
        if self.close_after or not self.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self.pending = b"".join(lines)

    def upstream_body(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.streamed:
            # Held back by one chunk: the last one goes out after the request is counted.
            if self.pending is None:
                self.pending = chunk
            elif self.held:
                self.wrote = True
                self.client.write(self.pending)
                self.pending = chunk
            else:
                self.pending += chunk
            self.held = True
            return
        if self.chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        if self.pending is not None:
            self.first_byte = time.perf_counter() - self.start
            chunk, self.pending = self.pending + chunk, None
        self.wrote = True
        self.client.write(chunk)

    def upstream_done(self) -> None:
        self.up_end = time.perf_counter()
        self._cancel_timer()
        last = b"0\r\n\r\n" if self.chunked else b""
        if self.pending is not None:
            last, self.pending = self.pending + last, None
        self.finish(self.status, None, last)

    def upstream_lost(self, retryable: bool) -> None:
        if self.done:
            return
        if retryable and not self.retried and self.status == 0:
            self.retried = True  # the upstream closed an idle connection as we reused it
            self.client.proxy_pool().send(self, self.request)
        elif self.up_close:
            self.upstream_done()
        else:
            self.fail("upstream_connect")

    def upstream_unreachable(self, reason: str) -> None:
        if not self.done:
            self.fail(reason)

    def on_timer(self) -> None:
        self.timer = None
        if self.done:
            return
        loop = self.client.loop
        up = self.upstream
        last = max(self.up_sent, up.last_read if up is not None else 0.0)
        left = last + self.client.proxy.config.timeout - loop.time()
        if left > 0:
            self.timer = loop.call_at(loop.time() + left, self.on_timer)
            return
        if up is not None:
            self.upstream = None
            up.abort()
        self.fail("upstream_timeout")

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- answering

    def fail(self, reason: str) -> None:
        """Answer 502/504 with a JSON reason; once bytes went out, cut the connection."""
        status = _UPSTREAM_STATUS[reason]
        self._cancel_timer()
        if self.upstream is not None:
            up, self.upstream = self.upstream, None
            up.abort()
        if self.wrote:
            self.close_after = True
            self.finish(status, reason)
            return
        self.pending = None
        self.respond(status, reason, f"{reason.replace('_', ' ')}: the upstream "
                     + ("did not answer in time" if status == 504 else "is unreachable or "
                        "closed the connection"))

    def respond(self, status: int, reason: str | None, message: str,
                body: bytes | None = None, content_type: bytes = b"application/json") -> None:
        """Answer from the proxy itself: a JSON error, or ``body`` when given."""
        if body is None:
            body = _json_body(status, reason or "", message)
        lines = [_STATUS_LINES[status], b"Content-Type: %s\r\nContent-Length: %d\r\n" % (
            content_type, len(body))]
        if self.close_after or not self.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(body)
        self.finish(status, reason, b"".join(lines))

    def finish(self, status: int, reason: str | None, last: bytes = b"") -> None:
        """Count the request, then write its ``last`` bytes: a client that reads the metrics
        right after its response sees itself counted."""
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        if self.counted:
            metrics = self.client.proxy.metrics
            if self.gauge is not None:
                self.gauge.dec()
            if reason is None and status >= 400:
                reason = "upstream_5xx" if status >= 500 else "upstream_4xx"
            metrics.observe_request(self.model, status, time.perf_counter() - self.start,
                                    reason)
            if self.up_end and self.model is not None:
                metrics.observe_stage(self.model, "compute", self.up_end - self.up_start)
            if self.first_byte is not None:
                metrics.observe_first_byte(self.model, self.first_byte)
        if last:
            self.client.write(last)
        self.client.finished(self)


class ClientConnection(asyncio.Protocol):
    """One downstream connection: parses requests, forwards them in order, writes answers."""

    def __init__(self, proxy: ProxyServer, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.queue: deque[_Exchange] = deque()
        self.active: _Exchange | None = None
        self.current: _Exchange | None = None
        self.paused = False
        self.write_paused = False
        self.ignoring = False
        self.last_data = loop.time()
        self.idle_timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0

    def proxy_pool(self) -> UpstreamPool:
        assert self.proxy.pool is not None
        return self.proxy.pool

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.proxy.clients.add(self)
        self.idle_timer = self.loop.call_later(self.proxy.config.client_timeout,
                                               self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.proxy.clients.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        pending = [self.active, *self.queue, self.current]
        self.queue.clear()
        for ex in pending:
            if ex is not None and not ex.done:
                if ex.upstream is not None:
                    up, ex.upstream = ex.upstream, None
                    up.abort()
                ex.finish(499, "client_closed")

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.ignoring:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._give_up(None)  # no upgrades or CONNECT: answer what came before, then close
        except httptools.HttpParserError:
            self._give_up("malformed HTTP request")

    def _give_up(self, error: str | None) -> None:
        """Stop reading; close once the requests already received are answered."""
        self._stop_reading()
        self.current = None
        last = self.queue[-1] if self.queue else self.active
        if last is not None:
            last.close_after = True
        elif error is None:
            self.close()
        else:
            ex = _Exchange(self, BAD_REQUEST, b"", b"", b"", [])
            ex.close_after = True
            self.active = ex
            too_large = self._header_bytes > self.proxy.config.max_header_bytes
            ex.respond(431 if too_large else 400, "bad_request",
                       "request headers too large" if too_large else error)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.resume_reading()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self.current = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.proxy.config.max_header_bytes:
            raise httptools.HttpParserError("request headers too large")

    def on_headers_complete(self) -> None:
        if self.ignoring:
            return
        method = self.parser.get_method()
        target = split_target(self._url)
        if target is None:
            ex = _Exchange(self, BAD_REQUEST, method, b"", b"", self._headers)
        else:
            path, query = target
            route = classify(method.decode("ascii", "replace"), path, self.proxy.default_model)
            ex = _Exchange(self, route, method, path.encode(), query, self._headers)
        ex.keep_alive = self.parser.should_keep_alive()
        ex.http11 = self.parser.get_http_version() == "1.1"
        self.current = ex
        limit = self.proxy.config.max_body_bytes
        expect = False
        for name, value in self._headers:
            low = name.lower()
            if low == b"content-length" and value.strip().isdigit() and int(value) > limit:
                self._too_large(ex)
                return
            if low == b"expect" and value.lower() == b"100-continue":
                expect = True
        if expect and self.active is None and not self.queue:
            self.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is None:
            return
        self._body_size += len(body)
        if self._body_size > self.proxy.config.max_body_bytes:
            self._too_large(ex)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        ex, self.current = self.current, None
        if ex is None:
            return
        ex.body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._enqueue(ex)

    # -- request handling

    def _too_large(self, ex: _Exchange) -> None:
        """Answer 413 without reading the body, then close: the stream is out of sync."""
        self.current = None
        ex.close_after = True
        ex.route = Route("too_large", ex.model, ex.counted)
        self._stop_reading()
        self._enqueue(ex)

    def _stop_reading(self) -> None:
        self.ignoring = True
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _enqueue(self, ex: _Exchange) -> None:
        if self.active is None:
            self._start(ex)
            return
        self.queue.append(ex)
        if len(self.queue) >= _MAX_PIPELINED and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def finished(self, ex: _Exchange) -> None:
        if self.active is not ex:
            return
        self.active = None
        if self.transport is None:
            return
        if ex.close_after or not ex.keep_alive:
            self._stop_reading()
            self.transport.close()
            return
        if self.queue:
            self._start(self.queue.popleft())
        if self.paused and len(self.queue) < _MAX_PIPELINED and not self.ignoring:
            self.paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _check_idle(self) -> None:
        self.idle_timer = None
        if self.transport is None:
            return
        timeout = self.proxy.config.client_timeout
        idle_for = self.loop.time() - self.last_data
        if self.active is None and idle_for >= timeout:
            self.transport.close()
            return
        self.idle_timer = self.loop.call_later(max(timeout - idle_for, 0.05)
                                               if self.active is None else timeout,
                                               self._check_idle)

    def _start(self, ex: _Exchange) -> None:
        self.active = ex
        kind = ex.route.kind
        proxy = self.proxy
        if kind == "openai":
            ex.model = _openai_model(ex.body)
        if ex.counted:
            ex.gauge = proxy.metrics.in_flight_gauge(ex.model)
            ex.gauge.inc()
        if kind in ("inference", "passthrough", "openai"):
            self._forward(ex, ex.path)
        elif kind == "seed":
            self._forward_seed(ex)
        elif kind == "metrics":
            encoder, content_type = choose_encoder(_header(ex.headers, b"accept"))
            ex.respond(200, None, "", encoder(proxy.registry), content_type.encode())
        elif kind == "too_large":
            ex.respond(413, "body_too_large",
                       f"request body exceeds {proxy.config.max_body_bytes} bytes")
        elif kind == "method_not_allowed":
            ex.respond(405, "method_not_allowed",
                       f"method {ex.method.decode('ascii', 'replace')} not allowed here")
        elif kind == "not_found":
            ex.respond(404, "not_found", "the proxy forwards only inference, health and "
                       "metadata routes")
        else:
            ex.close_after = True
            ex.respond(400, "bad_request", "unsupported request target")

    def _forward_seed(self, ex: _Exchange) -> None:
        """The seed's ``{"image_base64": ...}``: decoded and sent as image bytes."""
        if self.proxy.default_model is None:
            ex.respond(404, "unknown_model", "no model known: start the proxy with --model")
            return
        if not ex.body:
            ex.respond(400, "empty_body", "the request body is empty")
            return
        try:
            payload = json.loads(ex.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            ex.respond(400, "invalid_json", f"invalid JSON: {exc}")
            return
        encoded = payload.get("image_base64") if isinstance(payload, dict) else None
        if not isinstance(encoded, str):
            ex.respond(400, "invalid_json", 'expected a JSON object {"image_base64": "..."}')
            return
        try:
            ex.body = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            ex.respond(400, "invalid_image", "image_base64 is not valid base64")
            return
        ex.headers = [(b"Content-Type", b"application/octet-stream")]
        ex.query = b""
        self._forward(ex, b"/predictions/" + quote(self.proxy.default_model, safe="").encode())

    def _forward(self, ex: _Exchange, path: bytes) -> None:
        proxy = self.proxy
        lines = [b"%s %s%s%s HTTP/1.1\r\nHost: %s\r\n" % (
            ex.method, proxy.prefix, path, ex.query, proxy.host_header)]
        forwarded_for, named = _copy_headers(ex.headers, _REQUEST_DROP, lines)
        if named:  # the Connection header named more hop-by-hop headers
            del lines[1:]
            _copy_headers(ex.headers, _REQUEST_DROP | named, lines)
        lines.append(b"X-Forwarded-For: %s%s\r\n" % (forwarded_for, self.peer))
        if ex.body or ex.method == b"POST":
            lines.append(b"Content-Length: %d\r\n" % len(ex.body))
        lines.append(b"\r\n")
        lines.append(ex.body)
        ex.request = b"".join(lines)
        ex.up_start = time.perf_counter()
        ex.up_sent = self.loop.time()
        ex.timer = self.loop.call_at(ex.up_sent + proxy.config.timeout, ex.on_timer)
        self.proxy_pool().send(ex, ex.request)


def _copy_headers(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes],
                  lines: list[bytes]) -> tuple[bytes, frozenset[bytes]]:
    """Append the end-to-end headers to ``lines``; return the client's X-Forwarded-For
    prefix and the extra header names that its Connection header declared hop-by-hop."""
    forwarded_for = b""
    named: frozenset[bytes] = frozenset()
    for name, value in headers:
        low = name.lower()
        if low in drop:
            if low == b"connection":
                named = frozenset(t.strip() for t in value.lower().split(b",")) - {
                    b"close", b"keep-alive", b""}
            elif low == b"x-forwarded-for":
                forwarded_for = value + b", "
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    return forwarded_for, named


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _openai_model(body: bytes) -> str | None:
    """The ``"model"`` of an OpenAI-style JSON body; None when there is none."""
    if b'"model"' not in body:
        return None
    with contextlib.suppress(ValueError):
        payload = json.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("model"), str):
            return str(payload["model"])
    return None
