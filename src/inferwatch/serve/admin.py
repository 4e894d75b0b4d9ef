"""The admin API: fault injection. Off unless a token is configured; served on its own
listener bound to 127.0.0.1, so it is never reachable where the service port is."""

from __future__ import annotations

import hmac
import json
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferwatch.secrets import read_secret_file
from inferwatch.serve.faults import FaultError, Faults

ADMIN_HOST = "127.0.0.1"
MIN_TOKEN_LENGTH = 16
TOKEN_ENV = "INFERWATCH_ADMIN_TOKEN"


def admin_token(admin_port: int | None, token_file: Path | None,
                env: Mapping[str, str] | None = None) -> str | None:
    """The token of the admin API, or None when it is off: without a port it is off whatever
    token is configured. A token file others may read is refused (``SecretFileError``)."""
    if admin_port is None:
        return None
    env = os.environ if env is None else env
    token = read_secret_file(token_file, "--admin-token-file") if token_file else env.get(
        TOKEN_ENV)
    if not token:
        raise ValueError(f"--admin-port needs --admin-token-file or {TOKEN_ENV}")
    return token


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "error": message}, status)


def create_admin_app(faults: Faults, token: str) -> Starlette:
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the admin token must have at least {MIN_TOKEN_LENGTH} characters")
    expected = f"Bearer {token}".encode()

    Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _error(401, "missing or wrong bearer token")
            body: dict[str, Any] = {}
            if request.method == "POST":
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw else {}
                except (ValueError, RecursionError):  # RecursionError: nested too deep
                    return _error(400, "invalid JSON")
                if not isinstance(body, dict):
                    return _error(400, "expected a JSON object")
            try:
                return await handler(request, body)
            except (FaultError, TypeError, ValueError) as exc:
                return _error(422, str(exc))
        return endpoint

    async def show(request: Request, body: dict[str, Any]) -> Response:
        return JSONResponse(faults.describe())

    async def errors(request: Request, body: dict[str, Any]) -> Response:
        faults.set_error_ratio(float(body.get("ratio", 1.0)))
        return JSONResponse(faults.describe())

    async def latency(request: Request, body: dict[str, Any]) -> Response:
        faults.set_latency(str(body.get("stage", "compute")), float(body.get("seconds", 0.1)))
        return JSONResponse(faults.describe())

    async def cpu(request: Request, body: dict[str, Any]) -> Response:
        faults.start_cpu_hog(int(body.get("workers", os.cpu_count() or 1)),
                             float(body.get("seconds", 60)))
        return JSONResponse(faults.describe())

    async def drift(request: Request, body: dict[str, Any]) -> Response:
        faults.set_drift(str(body.get("kind", "noise")), float(body.get("strength", 1.0)))
        return JSONResponse(faults.describe())

    async def clear(request: Request, body: dict[str, Any]) -> Response:
        faults.clear()
        return JSONResponse(faults.describe())

    async def kill(request: Request, body: dict[str, Any]) -> Response:
        faults.stop_cpu_hog()
        return JSONResponse({"killing": os.getpid()},
                            background=BackgroundTask(os.kill, os.getpid(), signal.SIGKILL))

    app = Starlette(routes=[
        Route("/admin/faults", guarded(show), methods=["GET"]),
        Route("/admin/faults", guarded(clear), methods=["DELETE"]),
        Route("/admin/faults/errors", guarded(errors), methods=["POST"]),
        Route("/admin/faults/latency", guarded(latency), methods=["POST"]),
        Route("/admin/faults/cpu", guarded(cpu), methods=["POST"]),
        Route("/admin/faults/drift", guarded(drift), methods=["POST"]),
        Route("/admin/kill", guarded(kill), methods=["POST"]),
    ])
    app.router.redirect_slashes = False  # see inferwatch.stack.inbox
    return app
