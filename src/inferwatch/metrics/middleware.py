"""Pure-ASGI middleware that counts and times inference requests."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferwatch.metrics.instruments import InferenceMetrics
from inferwatch.metrics.names import reason_for_status

REASON_STATE_KEY = "inferwatch_error_reason"
"""Handlers put an error reason under this key of ``request.state`` for the middleware."""

# What may become an exemplar's value: bounded, and nothing to escape.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_NO_TRACE = b"0" * 32  # W3C: an all-zero trace id is invalid

_INFERENCE_PATHS = re.compile(
    r"^/(?:predictions/(?P<ts>[^/]+)(?:/[^/]+)?"
    r"|v2/models/(?P<oip>[^/]+)(?:/versions/[^/]+)?/infer)/?$"
)


def model_from_path(path: str) -> str | None:
    """The model named by a TorchServe or Open Inference Protocol v2 inference path.

    >>> model_from_path("/predictions/resnet18")
    'resnet18'
    >>> model_from_path("/v2/models/digits/versions/1/infer")
    'digits'
    >>> model_from_path("/metrics") is None
    True
    """
    match = _INFERENCE_PATHS.match(path)
    if match is None:
        return None
    return match.group("ts") or match.group("oip")


class MetricsMiddleware:
    """Count, time and classify inference requests of any ASGI app.

    >>> from prometheus_client import CollectorRegistry
    >>> async def app(scope, receive, send): ...
    >>> app = MetricsMiddleware(app, InferenceMetrics(["digits"], registry=CollectorRegistry()))

    ``resolve_model`` maps a request path to a model name, or None for paths that are not
    inference (those pass through uncounted). Unknown names are folded into one series by
    :class:`InferenceMetrics`, so a client cannot create series. A success's latency carries
    an exemplar that leads to the request: the trace id of its W3C ``traceparent``, else its
    ``X-Request-ID``, or the one the app answered with.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: InferenceMetrics,
        resolve_model: Callable[[str], str | None] = model_from_path,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.resolve_model = resolve_model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        model = self.resolve_model(scope["path"])
        if model is None:
            await self.app(scope, receive, send)
            return

        status = 500
        answered: Iterable[tuple[bytes, bytes]] = ()
        state = scope.setdefault("state", {})
        gauge = self.metrics.in_flight_gauge(model)
        gauge.inc()
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = message.get("headers", ())
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            status = max(status, 500)
            state.setdefault(REASON_STATE_KEY, "internal")
            raise
        finally:
            gauge.dec()
            reason = state.get(REASON_STATE_KEY)
            if status >= 400 and reason is None:
                reason = reason_for_status(status)
            seconds = time.perf_counter() - start
            # Headers are read only for the requests whose exemplars a scrape keeps.
            self.metrics.observe_request(model, status, seconds, reason,
                                         functools.partial(_exemplar, scope["headers"],
                                                           answered)
                                         if status < 400 else None)


def request_exemplar(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The exemplar of a request from its headers alone, their names in any case (as the
    proxy receives them): the trace id of its ``traceparent``, else its ``X-Request-ID``.

    >>> request_exemplar([(b"Traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01")])
    {'trace_id': 'abababababababababababababababab'}
    """
    return _exemplar([(name.lower(), value) for name, value in headers], ())


def _exemplar(headers: Iterable[tuple[bytes, bytes]],
              answered: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """``{"trace_id": ...}`` from a valid ``traceparent``, else ``{"request_id": ...}`` from
    a safe ``X-Request-ID`` of the request, else of the response; None without either."""
    request_id = None
    for name, value in headers:  # ASGI header names are lowercase, both ways
        if name == b"traceparent":
            trace = _TRACEPARENT.fullmatch(value)
            if trace is not None and trace[1] != _NO_TRACE:
                return {"trace_id": trace[1].decode()}
        elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            request_id = value
    if request_id is None:
        for name, value in answered:
            if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                request_id = value
                break
    return None if request_id is None else {"request_id": request_id.decode()}
