"""One proxied request and its answer: relayed from the upstream, or the proxy's own."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from inferwatch.metrics.histogram import ExemplarLabels
from inferwatch.metrics.middleware import request_exemplar
from inferwatch.metrics.names import SHED_REASON, STATUS_BY_REASON
from inferwatch.proxy.completions import StreamedCompletion, WholeCompletion
from inferwatch.proxy.context import ProxyContext
from inferwatch.proxy.routes import Route

if TYPE_CHECKING:
    from inferwatch.proxy.upstream import UpstreamConnection

logger = logging.getLogger("inferwatch.proxy")

# Hop-by-hop headers (RFC 9110 7.6.1): never relayed to the client.
_RESPONSE_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_SERVER_FAILURE = b'"InternalServerException"'
# What is read of a response after its client left, so that a response about to end is
# counted as it ends (the openai SDK closes a stream at its `data: [DONE]`, before the last
# bytes of the chunked body); beyond, the upstream is let go, as a client that left mid-answer
# does not want the rest computed.
_DRAIN_BYTES = 64 << 10


def _json_body(status: int, reason: str, message: str) -> bytes:
    return json.dumps({"code": status, "error": reason, "message": message},
                      separators=(",", ":")).encode()


class Downstream(Protocol):
    """The client connection an exchange answers on."""

    def write(self, data: bytes) -> None: ...
    def finished(self, ex: Exchange) -> None: ...
    def drop(self, ex: Exchange) -> None:
        """Close at once: answering ``ex`` failed inside the proxy."""


class Exchange:
    """One request: received from a client, maybe forwarded, answered exactly once."""

    __slots__ = (
        "body", "chunked", "client", "close_after", "completion", "context", "counted", "done",
        "drain", "first_byte", "gauge", "headers", "held", "http11", "keep_alive", "method",
        "model", "path", "pending", "query", "reads_completion", "request", "retried", "route",
        "start", "status", "streamed", "timer", "up_close", "up_end", "up_sent", "up_start",
        "upstream", "wrote",
    )

    def __init__(self, client: Downstream, context: ProxyContext, route: Route, method: bytes,
                 path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.client = client
        self.context = context
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
        self.drain: int | None = None  # bytes still read once the client left
        self.request = b""
        self.retried = False
        self.upstream: UpstreamConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.up_start = 0.0
        self.up_end = 0.0
        self.up_sent = 0.0
        self.up_close = False
        self.reads_completion = False  # an OpenAI-style completion, read for the LLM series
        self.completion: StreamedCompletion | WholeCompletion | None = None

    @property
    def active(self) -> bool:
        return not self.done

    # -- the upstream's response, from UpstreamConnection

    def upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        lines = [STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
        length = chunked = False
        content_type = b""
        for name, value in headers:
            low = name.lower()
            if low in _RESPONSE_DROP:
                chunked = chunked or (low == b"transfer-encoding" and b"chunked" in value.lower())
                continue
            if low == b"content-length":
                length = True
            elif low == b"content-type":
                content_type = value
            lines.append(b"%s: %s\r\n" % (name, value))
        if self.reads_completion and status == 200:
            if b"event-stream" in content_type:
                self.completion = StreamedCompletion(self.start)
            elif b"json" in content_type:
                self.completion = WholeCompletion()
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
        if self.streamed:
            # Sent at once: the client may wait long for the first byte (an LLM's first
            # token), and its timeouts and stream handling start with the head.
            self.wrote = True
            self.client.write(b"".join(lines))
        else:
            self.pending = b"".join(lines)

    def upstream_body(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.completion is not None:
            try:
                self.completion.feed(chunk)
            except Exception:  # a bug in the reading: the answer goes on, uncounted
                self.completion = None
                logger.exception("proxy_internal: reading a completion failed")
        if self.drain is not None:
            self.drain -= len(chunk)
            if self.drain < 0:
                self._let_go()
                self.finish(499, "client_closed")
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
        if self.first_byte is None:
            self.first_byte = time.perf_counter() - self.start
        if self.chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self.client.write(chunk)

    def upstream_done(self) -> None:
        self.up_end = time.perf_counter()
        self._cancel_timer()
        last = b"0\r\n\r\n" if self.chunked else b""
        if self.pending is not None:
            last, self.pending = self.pending + last, None
        self.finish(self.status, None, last)

    def client_lost(self, shutting_down: bool) -> None:
        """The client went away. Before the upstream's response began, or as the proxy shuts
        down, the request is counted ``client_closed`` and the upstream let go; else the
        response is read on (within ``--timeout`` and ``_DRAIN_BYTES``) and counted as it
        ends, with its status."""
        if self.done:
            return
        up = self.upstream
        if self.status == 0 or up is None or shutting_down:
            self._let_go()
            self.finish(499, "client_closed")
            return
        self.drain = _DRAIN_BYTES
        self.pending = None  # nobody to write it to
        up.resume_reading()  # paused while the client could not take more

    def upstream_lost(self, retryable: bool) -> None:
        if self.done:
            return
        if retryable and not self.retried and self.status == 0:
            self.retried = True  # the upstream closed an idle connection as we reused it
            self.context.pool.send(self, self.request)
        elif self.up_close:
            self.upstream_done()
        else:
            self.fail("upstream_connect")

    def upstream_unreachable(self, reason: str) -> None:
        if not self.done:
            self.fail(reason)

    def on_timer(self) -> None:
        try:
            self._check_timeout()
        except Exception as exc:
            self.crash(exc)

    def _check_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        loop = self.context.loop
        up = self.upstream
        last = max(self.up_sent, up.last_read if up is not None else 0.0)
        left = last + self.context.timeout - loop.time()
        if left > 0:
            self.timer = loop.call_at(loop.time() + left, self.on_timer)
            return
        self._let_go()
        self.fail("upstream_timeout")

    def _let_go(self) -> None:
        """Drop the upstream connection: what it still sends is not wanted."""
        if self.upstream is not None:
            up, self.upstream = self.upstream, None
            up.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- answering

    def fail(self, reason: str) -> None:
        """Answer 502/504 with a JSON reason; once bytes went out, cut the connection."""
        status = STATUS_BY_REASON[reason]
        self._cancel_timer()
        self._let_go()
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
        lines = [STATUS_LINES[status], b"Content-Type: %s\r\nContent-Length: %d\r\n" % (
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
        self._release_gauge()
        if self.counted:
            metrics = self.context.metrics
            if reason is None and status >= 400:
                # A 503 is the upstream shedding load (TorchServe: "Job queue is full", "no
                # worker to serve inference request"; serve: overloaded): InferenceRequestsShed.
                # But TorchServe also answers 503 InternalServerException "Prediction failed"
                # when a handler raises: a failure, found in the held-back last bytes.
                reason = (SHED_REASON if status == 503 and _SERVER_FAILURE not in last else
                          "upstream_5xx" if status >= 500 else "upstream_4xx")
            # Made, and the headers read, only for the observations a scrape keeps.
            exemplar = functools.partial(request_exemplar, self.headers)
            metrics.observe_request(self.model, status, time.perf_counter() - self.start,
                                    reason, exemplar)
            if self.up_end and self.model is not None:
                metrics.observe_stage(self.model, "compute", self.up_end - self.up_start)
            if self.first_byte is not None:
                metrics.observe_first_byte(self.model, self.first_byte)
            if self.completion is not None:
                self._observe_completion(self.completion, exemplar)
        if last:
            self.client.write(last)
        self.client.finished(self)

    def _observe_completion(self, completion: StreamedCompletion | WholeCompletion,
                            exemplar: ExemplarLabels) -> None:
        """What was read of a 200's completion, however its answer ended: the tokens that
        came were spent."""
        self.completion = None
        try:
            done = completion.completion()
        except Exception:  # as in upstream_body
            logger.exception("proxy_internal: reading a completion failed")
            return
        if done is not None:
            self.context.metrics.observe_completion(self.model, done, exemplar)

    def _release_gauge(self) -> None:
        if self.gauge is not None:
            gauge, self.gauge = self.gauge, None
            gauge.dec()

    def crash(self, exc: Exception) -> None:
        """A bug in the proxy, neither the client's doing nor the upstream's: logged, answered
        500 ``proxy_internal`` when no byte went out yet, and the connection closed after, as
        its state is not to be trusted."""
        logger.error("proxy_internal: %s %s failed", self.method.decode("latin-1"),
                     self.path.decode("latin-1"), exc_info=exc)
        self.close_after = True
        self._let_go()
        if not self.done:
            try:
                if self.wrote:
                    self.finish(500, "proxy_internal")
                else:
                    self.pending = None
                    self.respond(500, "proxy_internal", "the proxy failed on this request; "
                                 "its log has the details")
                return
            except Exception:  # answering failed too: what the request holds is let go below
                logger.exception("proxy_internal: answering the failed request failed")
        self.done = True
        self._cancel_timer()
        self._release_gauge()
        self.client.drop(self)
