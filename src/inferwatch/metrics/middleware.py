"""Pure-ASGI middleware that counts and times inference requests."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferwatch.metrics.instruments import InferenceMetrics

REASON_STATE_KEY = "inferwatch_error_reason"
"""Handlers put an error reason under this key of ``request.state`` for the middleware."""

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
    :class:`InferenceMetrics`, so a client cannot create series.
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
        state = scope.setdefault("state", {})
        gauge = self.metrics.in_flight_gauge(model)
        gauge.inc()
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
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
                reason = "internal" if status >= 500 else _reason_for_status(status)
            self.metrics.observe_request(model, status, time.perf_counter() - start, reason)


def _reason_for_status(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
            415: "unsupported_media_type", 429: "overloaded"}.get(status, "bad_request")
