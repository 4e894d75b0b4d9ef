"""uvicorn's httptools protocol under :class:`~inferwatch.httplimits.HttpLimits`."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inferwatch.httplimits import HttpLimits

__all__ = ["LimitedHttpToolsProtocol", "uvicorn_options"]


def _error(status: HTTPStatus, reason: str, message: str) -> tuple[bytes, bytes]:
    """An error answered before the application sees the request: head and body."""
    body = json.dumps({"code": status.value, "error": reason, "message": message}).encode()
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    return head, body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under :attr:`limits` (set by a subclass).

    A request's head is pending from its first byte (or from connect) until uvicorn puts its
    method in the scope. A timer per request would cost as much as the rest of this class
    (``call_later`` and ``cancel``: some microseconds), so a watch looks at each connection
    every quarter of ``header_timeout`` and closes one whose same head is still pending after
    the whole timeout. httptools keeps a header field in memory until the field ends, so the
    bytes read while a head is pending are counted, and the fields measured once the head is
    complete if its reads could hold more than the limit.
    """

    limits: HttpLimits
    # Slots: uvicorn's protocol has about 28 attributes, and more in its __dict__ would
    # outgrow CPython's keys shared by all instances, slowing every attribute access of every
    # request (by some microseconds, measured).
    __slots__ = ("_counted", "_head_bytes", "_last_read", "_pending", "_ticks", "_watch")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch: asyncio.TimerHandle | None = None
        self._pending: object = None  # the scope of the head the watch saw pending
        self._ticks = 0  # watches that saw _pending pending
        self._counted: object = None  # the scope of the pending head _head_bytes counts
        self._head_bytes = 0  # read while _counted was pending
        self._last_read = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(_TOO_MANY_CONNECTIONS)
            return
        self._ticks = 1  # the timeout of a first head runs from connect
        self._watch = self.loop.call_later(self.limits.header_timeout / _TICKS, self._watch_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_read = len(data)
        super().data_received(data)
        scope = self.scope
        if scope is None or "method" not in scope:  # a head is pending after this read
            if scope is not self._counted:
                self._counted, self._head_bytes = scope, 0
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(_HEAD_TOO_LARGE)

    def on_headers_complete(self) -> None:
        # _head_bytes may be a previous head's: then it only makes the bound looser.
        if (self._head_bytes + self._last_read > self.limits.max_header_bytes
                and self._head_size() > self.limits.max_header_bytes):
            app, self.app = self.app, _refuse_head  # answered through uvicorn's cycle
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _watch_head(self) -> None:
        scope = self.scope
        if scope is not None and "method" in scope:  # no head pending
            self._ticks = 0
        elif self._ticks and scope is self._pending:
            self._ticks += 1
        else:
            self._pending, self._ticks = scope, 1
        if self._ticks > _TICKS:
            self._watch = None
            if scope is None:  # not a byte since connect: nothing to answer
                self.transport.close()
            else:
                self._refuse(_HEAD_TIMEOUT)
            return
        self._watch = self.loop.call_later(self.limits.header_timeout / _TICKS, self._watch_head)

    def _refuse(self, response: tuple[bytes, bytes]) -> None:
        if self.transport.is_closing():  # uvicorn answered first (400 to a malformed head)
            return
        # Never in the middle of a response to a previous request: then the client only
        # sees the connection close.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(b"".join(response))
        self.transport.close()


_TICKS = 4
_HEAD_TOO_LARGE = _error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large",
                         "the request line and headers are too large")
_HEAD_TIMEOUT = _error(HTTPStatus.REQUEST_TIMEOUT, "header_timeout",
                       "the request headers took too long to arrive")
_TOO_MANY_CONNECTIONS = _error(HTTPStatus.SERVICE_UNAVAILABLE, "too_many_connections",
                               "too many open connections; retry later")


async def _refuse_head(scope: Any, receive: Any, send: Any) -> None:
    body = _HEAD_TOO_LARGE[1]
    await send({"type": "http.response.start",
                "status": HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE.value,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def uvicorn_options(limits: HttpLimits) -> dict[str, Any]:
    """``limits`` as keyword arguments of ``uvicorn.Config``:

    >>> options = uvicorn_options(HttpLimits(header_timeout=5))  # uvicorn.Config(app, **options)
    >>> options["timeout_keep_alive"], options["http"].limits.header_timeout
    (5.0, 5)
    """
    protocol = type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
    return {"http": protocol, "timeout_keep_alive": limits.keep_alive_timeout}
