"""What one HTTP client may hold of a uvicorn server: header bytes, time to send a request
head, idle time between requests, and connections.

uvicorn parses requests with httptools (llhttp), which caps no header size, and arms its only
timer, the keep-alive one, after a first response: a client that connects and trickles a
header holds the connection, and every byte of its header, for ever. Every server inferwatch
runs (the service and its admin API, the dashboard page, the alert inbox) gets
:func:`inferwatch.limitedhttp.uvicorn_options`; this module imports no uvicorn (a third of the
command line's start-up time).
"""

from __future__ import annotations

import dataclasses

__all__ = ["HttpLimits"]


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """Limits of each server process."""

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
