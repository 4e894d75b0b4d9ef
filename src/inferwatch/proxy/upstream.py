"""Pooled HTTP/1.1 connections to the one upstream, parsed with httptools.

Callbacks instead of a coroutine per request: a response is handed to its ``ResponseSink``
as it is parsed, so streamed bodies go out chunk by chunk with nothing buffered.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import httptools


class ResponseSink(Protocol):
    """Where an upstream connection delivers the response to one request."""

    upstream: UpstreamConnection | None

    @property
    def active(self) -> bool: ...
    def upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def upstream_body(self, chunk: bytes) -> None: ...
    def upstream_done(self) -> None: ...
    def upstream_lost(self, retryable: bool) -> None:
        """The connection closed before the response ended; ``retryable`` when it was an
        idle pooled connection that the upstream closed before answering anything."""

    def upstream_unreachable(self, reason: str) -> None: ...
    def crash(self, exc: Exception) -> None:
        """One of the calls above failed: a bug in the proxy. Answer, and let go of this
        connection (aborted through ``upstream``, when it is still set)."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reused = False
        self.received = False
        self.closed = False
        self.paused = False
        self.last_read = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def send(self, sink: ResponseSink, data: bytes) -> None:
        assert self.transport is not None
        self.sink = sink
        sink.upstream = self
        self.headers = []
        self.received = False
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.last_read = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.closed = True
            assert self.transport is not None
            self.transport.abort()  # connection_lost reports the failure to the sink

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim response (103 Early Hints): the real one follows
            self.headers = []
            return
        sink = self.sink
        if sink is not None:
            try:
                sink.upstream_headers(status, self.headers)
            except Exception as exc:
                sink.crash(exc)

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            try:
                sink.upstream_body(body)
            except Exception as exc:
                sink.crash(exc)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream = None
        if self.parser.should_keep_alive() and not self.closed:
            self.reused = True
            self.pool.release(self)
        else:
            self.close()
        if sink is not None:
            try:
                sink.upstream_done()
            except Exception as exc:
                sink.crash(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream = None
            try:
                sink.upstream_lost(self.reused and not self.received)
            except Exception as exc:
                sink.crash(exc)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, without telling the sink (it has given up)."""
        self.sink = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to ``host:port``: one per request in flight, idle ones reused.

    At most ``max_idle`` idle connections are kept; the upstream's own keep-alive timeout
    closes the others.
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float, max_idle: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.loop = loop
        self.idle: list[UpstreamConnection] = []
        self._connecting: set[asyncio.Task[None]] = set()

    def send(self, sink: ResponseSink, data: bytes) -> None:
        """Send a serialized request on an idle connection, or on a new one."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.send(sink, data)
                return
        task = self.loop.create_task(self._connect(sink, data))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, sink: ResponseSink, data: bytes) -> None:
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, conn = await self.loop.create_connection(
                        lambda: UpstreamConnection(self), self.host, self.port)
            except TimeoutError:
                sink.upstream_unreachable("upstream_timeout")
            except OSError:
                sink.upstream_unreachable("upstream_connect")
            else:
                if sink.active:
                    conn.send(sink, data)
                else:
                    self.release(conn)
        except Exception as exc:
            sink.crash(exc)

    def release(self, conn: UpstreamConnection) -> None:
        conn.resume_reading()
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        while self.idle:
            self.idle.pop().close()
