"""What a running proxy hands down to its client connections and their requests.

As uvicorn hands its protocols a ``config`` and a ``server_state``: a connection and an exchange
read what they need here, one attribute away, and never reach back up to the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from inferwatch.metrics import InferenceMetrics
from inferwatch.proxy.upstream import UpstreamPool


@dataclass(frozen=True, slots=True)
class ProxyContext:
    """The proxy's settings and shared parts, fixed once it listens."""

    loop: asyncio.AbstractEventLoop
    pool: UpstreamPool
    metrics: InferenceMetrics
    registry: CollectorRegistry
    default_model: str | None
    """Model of the seed's ``POST /infer`` route."""
    prefix: bytes
    """The upstream URL's path, put before every forwarded path."""
    host_header: bytes
    timeout: float
    client_timeout: float
    max_body_bytes: int
    max_header_bytes: int
    llm_metrics: bool
    """Whether OpenAI-style completions are read for their tokens, times and finish reasons."""
