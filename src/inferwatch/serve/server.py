"""How ``inferwatch serve`` runs uvicorn: its options, and the admin API on the service's loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from inferwatch.httplimits import HttpLimits
from inferwatch.limitedhttp import uvicorn_options
from inferwatch.serve.admin import ADMIN_HOST

__all__ = ["run_service", "serve_options", "serve_together"]


def serve_options() -> dict[str, Any]:
    """How `serve` runs uvicorn, beside its HttpLimits (which choose the HTTP protocol: a
    worker process gets them apart, as they are no JSON). The service never reads client
    addresses, so it trusts no X-Forwarded-* header and skips uvicorn's middleware for them;
    no Server header tells scanners what runs here."""
    return {"loop": _installed_or("uvloop", "auto"), "proxy_headers": False,
            "server_header": False}


def _installed_or(module: str, fallback: str) -> str:
    return module if importlib.util.find_spec(module) else fallback


def run_service(app: ASGIApp, host: str, port: int, limits: HttpLimits,
                admin: ASGIApp | None = None, admin_port: int | None = None) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT; with ``admin`` and
    ``admin_port``, the admin API beside it on 127.0.0.1."""
    main = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, **serve_options(),
        **uvicorn_options(limits)))
    if admin is None or admin_port is None:
        main.run()
        return
    side = uvicorn.Config(admin, host=ADMIN_HOST, port=admin_port, log_level="warning",
                          access_log=False, **uvicorn_options(limits))
    serve_together(main, [side])


def serve_together(main: uvicorn.Server, others: list[uvicorn.Config]) -> None:
    """Run the uvicorn server ``main`` and servers of the configs ``others`` on one event
    loop (``main``'s kind: uvloop for `serve`) until ``main`` stops; ``main`` handles the
    signals and stops the others."""

    class Follower(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    followers = [Follower(config) for config in others]

    async def together() -> None:
        tasks = [asyncio.create_task(f.serve()) for f in followers]
        try:
            await main.serve()
        finally:
            for f in followers:
                f.should_exit = True
            await asyncio.gather(*tasks)

    with asyncio.Runner(loop_factory=main.config.get_loop_factory()) as runner:
        runner.run(together())
