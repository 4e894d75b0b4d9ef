"""One client connection: parses requests with httptools, forwards them in order."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections import deque
from typing import Any
from urllib.parse import quote

import httptools

from inferwatch.metrics.exposition import render_exposition
from inferwatch.proxy.context import ProxyContext
from inferwatch.proxy.exchange import Exchange, logger
from inferwatch.proxy.routes import BAD_REQUEST, Route, classify, split_target

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself.
_REQUEST_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
    b"content-length", b"expect", b"x-forwarded-for",
})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_COMPLETION_PATHS = frozenset({b"/v1/chat/completions", b"/v1/completions"})
_TOO_DEEP = "invalid JSON: nested too deeply"


class ServerState:
    """What the server and its client connections share while it runs (uvicorn's
    ``ServerState``)."""

    __slots__ = ("clients", "closing")

    def __init__(self) -> None:
        self.clients: set[ClientConnection] = set()
        self.closing = False  # responses are no longer read to their end for a closed client


class ClientConnection(asyncio.Protocol):
    """One downstream connection: parses requests, forwards them in order, writes answers."""

    def __init__(self, context: ProxyContext, state: ServerState) -> None:
        self.context = context
        self.state = state
        self.loop = loop = context.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.queue: deque[Exchange] = deque()
        self.active: Exchange | None = None
        self.current: Exchange | None = None
        self.paused = False
        self.write_paused = False
        self.ignoring = False
        self.last_data = loop.time()
        self.began = 0.0  # when the request being received began; 0 between requests
        self.idle_timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._in_head = False  # between a request's first byte and its headers' end
        self._head_raw = 0  # bytes of a head still incomplete after the reads so far
        self._body: list[bytes] = []
        self._body_size = 0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.state.clients.add(self)
        self.idle_timer = self.loop.call_later(self.context.client_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.state.clients.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        pending = [self.active, *self.queue, self.current]
        self.queue.clear()
        for ex in pending:
            if ex is not None and not ex.done:
                try:
                    ex.client_lost(self.state.closing)
                except Exception as exc:
                    ex.crash(exc)

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.ignoring:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._give_up(None)  # no upgrades or CONNECT: answer what came before, then close
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, httptools.HttpParserError):  # raised by on_url or on_header
                self._give_up("malformed HTTP request")
            else:
                logger.error("proxy_internal: reading a request failed", exc_info=cause)
                self._give_up("the proxy failed to read this request; its log has the details",
                              internal=True)
        except httptools.HttpParserError:
            self._give_up("malformed HTTP request")
            return
        if self._in_head and not self.ignoring:
            # httptools hands a header over only once it ends, holding (and copying) it until
            # then: a head still incomplete after twice the limit (separators included) is
            # refused now, not after a 60 MB field.
            self._head_raw += len(data)
            if self._head_raw > 2 * self.context.max_header_bytes:
                self._header_bytes = self._head_raw
                self._give_up("request headers too large")

    def _give_up(self, error: str | None, *, internal: bool = False) -> None:
        """Stop reading; close once the requests already received are answered."""
        self._stop_reading()
        self.current = None
        last = self.queue[-1] if self.queue else self.active
        if last is not None:
            last.close_after = True
        elif error is None:
            self.close()
        else:
            ex = Exchange(self, self.context, BAD_REQUEST, b"", b"", b"", [])
            ex.close_after = True
            self.active = ex
            if internal:
                ex.respond(500, "proxy_internal", error)
                return
            too_large = self._header_bytes > self.context.max_header_bytes
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
        self.began = self.loop.time()
        self._in_head = True
        self._head_raw = 0
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self.current = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.context.max_header_bytes:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # not a chunked body's trailer: never forwarded as a header
            self._headers.append((name, value))
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.context.max_header_bytes:
            raise httptools.HttpParserError("request headers too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.ignoring:
            return
        method = self.parser.get_method()
        target = split_target(self._url)
        if target is None:
            ex = Exchange(self, self.context, BAD_REQUEST, method, b"", b"", self._headers)
        else:
            path, query = target
            route = classify(method.decode("ascii", "replace"), path, self.context.default_model)
            ex = Exchange(self, self.context, route, method, path.encode(), query, self._headers)
        ex.keep_alive = self.parser.should_keep_alive()
        ex.http11 = self.parser.get_http_version() == "1.1"
        self.current = ex
        limit = self.context.max_body_bytes
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
        if self._body_size > self.context.max_body_bytes:
            self._too_large(ex)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.began = 0.0
        ex, self.current = self.current, None
        if ex is None:
            return
        ex.body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._enqueue(ex)

    # -- request handling

    def _too_large(self, ex: Exchange) -> None:
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

    def _enqueue(self, ex: Exchange) -> None:
        if self.active is None:
            self._start(ex)
            return
        # Read no further until the active one is answered: a pipelining client gets one
        # request buffered ahead (with what its last read held), not one per request sent.
        self.queue.append(ex)
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def finished(self, ex: Exchange) -> None:
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
        if self.paused and not self.queue and not self.ignoring:
            self.paused = False
            self.transport.resume_reading()

    def drop(self, ex: Exchange) -> None:
        """Close the connection at once: answering ``ex`` failed inside the proxy."""
        if self.active is ex:
            self.active = None
        self._stop_reading()
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _check_idle(self) -> None:
        """Close idle keep-alive connections, and clients too slow to send one request."""
        self.idle_timer = None
        if self.transport is None:
            return
        timeout = self.context.client_timeout
        now = self.loop.time()
        idle_for = now - self.last_data
        # While paused, the request read in part waits for the proxy, not for the client.
        slow = self.began and now - self.began >= timeout and not (self.ignoring or self.paused)
        if slow or (self.active is None and idle_for >= timeout):
            self.transport.close()
            return
        self.idle_timer = self.loop.call_later(max(timeout - idle_for, 0.05)
                                               if self.active is None else timeout,
                                               self._check_idle)

    def _start(self, ex: Exchange) -> None:
        self.active = ex
        try:
            self._answer(ex)
        except Exception as exc:  # a bug in the proxy: the request still gets its answer
            ex.crash(exc)

    def _answer(self, ex: Exchange) -> None:
        kind = ex.route.kind
        context = self.context
        if kind == "openai":
            try:
                ex.model = _openai_model(ex.body)
            except ValueError as exc:
                ex.respond(400, "invalid_json", str(exc))
                return
            ex.reads_completion = context.llm_metrics and ex.path in _COMPLETION_PATHS
        if ex.counted:
            ex.gauge = context.metrics.in_flight_gauge(ex.model)
            ex.gauge.inc()
        if kind in ("inference", "passthrough", "openai"):
            self._forward(ex, ex.path)
        elif kind == "seed":
            self._forward_seed(ex)
        elif kind == "metrics":
            body, content_type = render_exposition(context.registry,
                                                   _header(ex.headers, b"accept"))
            ex.respond(200, None, "", body, content_type.encode())
        elif kind == "too_large":
            ex.respond(413, "body_too_large",
                       f"request body exceeds {context.max_body_bytes} bytes")
        elif kind == "method_not_allowed":
            ex.respond(405, "method_not_allowed",
                       f"method {ex.method.decode('ascii', 'replace')} not allowed here")
        elif kind == "not_found":
            ex.respond(404, "not_found", "the proxy forwards only inference, health and "
                       "metadata routes")
        else:
            ex.close_after = True
            ex.respond(400, "bad_request", "unsupported request target")

    def _forward_seed(self, ex: Exchange) -> None:
        """The seed's ``{"image_base64": ...}``: decoded and sent as image bytes."""
        model = self.context.default_model
        if model is None:
            ex.respond(404, "unknown_model", "no model known: start the proxy with --model")
            return
        if not ex.body:
            ex.respond(400, "empty_body", "the request body is empty")
            return
        try:
            payload = _load_json(ex.body)
        except ValueError as exc:
            ex.respond(400, "invalid_json", str(exc))
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
        self._forward(ex, b"/predictions/" + quote(model, safe="").encode())

    def _forward(self, ex: Exchange, path: bytes) -> None:
        context = self.context
        lines = [b"%s %s%s%s HTTP/1.1\r\nHost: %s\r\n" % (
            ex.method, context.prefix, path, ex.query, context.host_header)]
        forwarded_for, named = _copy_headers(ex.headers, _REQUEST_DROP, lines)
        if named:  # the Connection header named more hop-by-hop headers
            del lines[1:]
            _copy_headers(ex.headers, _REQUEST_DROP | named, lines)
        lines.append(b"X-Forwarded-For: %s%s\r\n" % (forwarded_for, self.peer))
        if ex.body or ex.method in (b"POST", b"PUT"):
            lines.append(b"Content-Length: %d\r\n" % len(ex.body))
        lines.append(b"\r\n")
        lines.append(ex.body)
        ex.request = b"".join(lines)
        ex.up_start = time.perf_counter()
        ex.up_sent = self.loop.time()
        ex.timer = self.loop.call_at(ex.up_sent + context.timeout, ex.on_timer)
        context.pool.send(ex, ex.request)


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


def _load_json(body: bytes) -> Any:
    """``json.loads``, failing with a ValueError that says what is wrong in words: never the
    exception's own text, which quotes the input's bytes.

    >>> _load_json(b"[" * 100_000)
    Traceback (most recent call last):
    ...
    ValueError: invalid JSON: nested too deeply
    """
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ValueError("invalid JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                         ) from None
    except ValueError:  # an integer beyond sys.get_int_max_str_digits()
        raise ValueError("invalid JSON: a number with too many digits") from None
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


def _openai_model(body: bytes) -> str | None:
    """The ``"model"`` of an OpenAI-style JSON body; None when there is none, or when the body
    is no JSON, which the upstream answers itself. A body nested deeper than Python's parsers
    go (the upstream's too, when it is a Python server) raises ValueError."""
    if b'"model"' not in body:
        return None
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None
    except ValueError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("model"), str):
        return str(payload["model"])
    return None
