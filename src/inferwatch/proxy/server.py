"""The reverse proxy: an asyncio protocol per client connection, httptools on both sides.

No framework sits between the sockets and the forwarding: measured against aiohttp, uvicorn
and granian based proxies, this is what keeps up with nginx (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from inferwatch.metrics import InferenceMetrics
from inferwatch.proxy.connection import ClientConnection, ServerState
from inferwatch.proxy.context import ProxyContext
from inferwatch.proxy.upstream import UpstreamPool


@dataclass(frozen=True)
class ProxyConfig:
    """Where the proxy listens, the one upstream it forwards to, and its limits.

    >>> ProxyConfig("http://127.0.0.1:8080", models=["digits"]).port
    8090
    """

    upstream: str
    host: str = "127.0.0.1"
    port: int = 8090
    models: Mapping[str, str] | Sequence[str] = ()
    default_model: str | None = None
    """Model of the seed's ``POST /infer`` route; the first model when not given."""
    timeout: float = 60.0
    """Longest wait for the upstream's next byte (before the head and between chunks)."""
    connect_timeout: float = 5.0
    max_body_bytes: int = 8 << 20
    """Above TorchServe's default ``max_request_size`` (6,553,500): its own limit is the one a
    client meets."""
    max_header_bytes: int = 64 << 10
    max_idle_connections: int = 256
    client_timeout: float = 75.0
    """Idle keep-alive client connections, and clients that stall mid-request, are closed."""
    latency_buckets: Sequence[float] | None = None
    llm_metrics: bool = True
    """Read OpenAI-style completions (``/v1/chat/completions``, ``/v1/completions``) for their
    tokens, time to first token, inter-token latency and finish reasons."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {self.upstream!r}")
        if parts.query or parts.fragment:
            raise ValueError("upstream URL must not have a query or fragment")
        for name in ("timeout", "connect_timeout", "client_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_body_bytes < 0 or self.max_header_bytes < 1024:
            raise ValueError("max_body_bytes must be >= 0 and max_header_bytes >= 1024")


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ProxyServer:
    """An instrumented reverse proxy in front of one inference server.

    >>> from prometheus_client import CollectorRegistry
    >>> proxy = ProxyServer(ProxyConfig("http://127.0.0.1:8080", models=["digits"]),
    ...                     CollectorRegistry())
    >>> proxy.metrics.model_label("digits"), proxy.metrics.model_label("other")
    ('digits', '_unknown')

    ``await proxy.start()`` listens on ``config.host:config.port`` (0 picks a free port, read
    back from ``proxy.port``); ``await proxy.close()`` stops it. ``proxy.run()`` does both
    around a wait for SIGINT or SIGTERM, on uvloop when it is installed.
    """

    def __init__(self, config: ProxyConfig, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()
        self.config = config
        self.registry = registry if registry is not None else _registry()
        kwargs = {"latency_buckets": config.latency_buckets} if config.latency_buckets else {}
        self.metrics = InferenceMetrics(config.models, registry=self.registry, **kwargs)
        for name, version in self.metrics.models.items():
            # The dashboard lists models and hosts from this series, as it does for serve's;
            # the runtime is the upstream's, which the proxy cannot see.
            self.metrics.model_info.labels(name, version, "").set(1)
        self.port = config.port
        self.pool: UpstreamPool | None = None
        self.state = ServerState()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        parts = urlsplit(config.upstream)
        self.pool = UpstreamPool(parts.hostname or "", parts.port or 80,
                                 connect_timeout=config.connect_timeout,
                                 max_idle=config.max_idle_connections, loop=loop)
        context = ProxyContext(
            loop=loop, pool=self.pool, metrics=self.metrics, registry=self.registry,
            default_model=config.default_model or next(iter(self.metrics.models), None),
            prefix=parts.path.rstrip("/").encode(),
            host_header=parts.netloc.rsplit("@", 1)[-1].encode(),
            timeout=config.timeout, client_timeout=config.client_timeout,
            max_body_bytes=config.max_body_bytes, max_header_bytes=config.max_header_bytes,
            llm_metrics=config.llm_metrics)
        self._server = await loop.create_server(
            lambda: ClientConnection(context, self.state), config.host, config.port,
            backlog=1024, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.state.closing = True
        if self._server is not None:
            self._server.close()
        for client in list(self.state.clients):
            client.close()
        if self.pool is not None:
            self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.start()
            try:
                await stop.wait()
            finally:
                await self.close()

        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
            return
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
