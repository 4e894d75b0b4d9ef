"""What one HTTP client may hold of a uvicorn server: header bytes, time to send a request
head, idle time between requests, and connections.

uvicorn parses requests with httptools (llhttp), which caps no header size, and arms its only
timer, the keep-alive one, after a first response: a client that connects and trickles a
header holds the connection, and every byte of its header, for ever. Every server inferwatch
runs (the service and its admin API, the dashboard page, the alert inbox) gets
:meth:`HttpLimits.uvicorn_options`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["HttpLimits"]


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """Limits of each server process, as keyword arguments of ``uvicorn.Config``:

    >>> options = HttpLimits(header_timeout=5).uvicorn_options()  # uvicorn.Config(app, **options)
    >>> options["timeout_keep_alive"], options["http"].limits.header_timeout
    (5.0, 5)
    """

    max_header_bytes: int = 64 << 10
    """Largest request head (target and header fields); beyond, 431."""
    header_timeout: float = 10.0
    """Longest time from connect, or from a request's first byte, to its complete head (and
    at most a quarter more)."""
    keep_alive_timeout: float = 5.0
    """Longest idle time between requests on one connection."""
    max_connections: int = 1000
    """Open connections; one more is answered 503 and closed."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"--{field.name.replace('_', '-')} must be positive")

    def uvicorn_options(self) -> dict[str, Any]:
        # Imported here: uvicorn takes a third of the command line's start-up time.
        from inferwatch.limitedhttp import LimitedHttpToolsProtocol

        protocol = type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": self})
        return {"http": protocol, "timeout_keep_alive": self.keep_alive_timeout}
