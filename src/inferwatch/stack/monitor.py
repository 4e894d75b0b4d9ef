"""Inference servers that the stack monitors but does not run (`inferwatch up --monitor`).

A server is named by the address of its inference API, the one its clients use::

    torchserve=127.0.0.1:8080                               # metrics 127.0.0.1:8082, models on 8081
    torchserve=10.0.0.5:8080,metrics=10.0.0.5:9082,management=10.0.0.5:9081
    vllm=127.0.0.1:8000,proxy                               # and `inferwatch proxy` before it
    proxy=127.0.0.1:5000                                    # any server: the proxy measures it

The metrics and management addresses default to the server's default ports on the API's host
(``KNOWN_SERVERS``); vLLM serves its metrics on its API port. ``proxy`` (or ``--proxy``) starts
`inferwatch proxy` before the server, scraped as the stack's ``inference`` job; its models then
come from the proxy alone (``stack/native.py`` leaves them out of the server's mapping).

>>> server = parse_monitor("torchserve=127.0.0.1:8080")
>>> server.metrics, server.models_at, server.proxied
('127.0.0.1:8082', '127.0.0.1:8081', False)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from inferwatch.metrics.names import (
    ERRORS_TOTAL,
    INTER_TOKEN_LATENCY_SECONDS,
    LATENCY_SECONDS,
    TIME_TO_FIRST_TOKEN_SECONDS,
)
from inferwatch.proxy.discovery import DiscoveryError, discover_models
from inferwatch.stack.addresses import address
from inferwatch.stack.config import KNOWN_SERVERS
from inferwatch.stack.native import NATIVE_SERVERS, NativeServer
from inferwatch.stack.slo import SLO, load_slos, slos_for

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "KINDS",
    "MonitorError",
    "MonitoredServer",
    "check_metrics",
    "coverage_notes",
    "discover",
    "monitored_servers",
    "monitored_slos",
    "parse_monitor",
    "parse_monitors",
]

PROXY_ONLY = "proxy"
KINDS = (*KNOWN_SERVERS, PROXY_ONLY)

# The proxy measures these on OpenAI-style streams only: vLLM's, and those of a server it
# does not know, most often an LLM server with an OpenAI-style API (TGI, llama.cpp, SGLang).
_STREAM_SERIES = frozenset({f"{TIME_TO_FIRST_TOKEN_SECONDS}_bucket",
                            f"{INTER_TOKEN_LATENCY_SECONDS}_bucket"})
_OPENAI_KINDS = ("vllm", PROXY_ONLY)

# What a metrics endpoint that does not answer usually means, by server.
_METRICS_HINTS = {
    "torchserve": "TorchServe serves them on its metrics_address (default port 8082), with "
                  "metrics_mode=prometheus in config.properties for the model metrics",
    "mlserver": "MLServer serves them on its metrics_port (default 8082)",
    "triton": "Triton serves them on --metrics-port (default 8002)",
    "vllm": "vLLM serves them on its API port",
}


class MonitorError(ValueError):
    pass


@dataclass(frozen=True)
class MonitoredServer:
    kind: str  # a KNOWN_SERVERS job, or "proxy": a server only the proxy measures
    api: str  # host:port of its inference API
    metrics: str | None  # host:port of its own /metrics; None for kind "proxy"
    models_at: str  # host:port where it lists its models (TorchServe: the management API)
    proxied: bool = False
    models: tuple[str, ...] = ()

    @property
    def native(self) -> NativeServer | None:
        return next((s for s in NATIVE_SERVERS if s.name == self.kind), None)

    def measures(self, record: str) -> bool:
        """Whether its models get the canonical series ``record``: the proxy measures every
        one it needs (an LLM stream's of an OpenAI-style server only); without it, the
        server's own mapping decides."""
        if self.proxied and (record not in _STREAM_SERIES or self.kind in _OPENAI_KINDS):
            return True
        return bool(self.native and self.native.maps(record))

    @property
    def metrics_url(self) -> str | None:
        if self.metrics is None:
            return None
        return f"http://{self.metrics}{KNOWN_SERVERS[self.kind].metrics_path}"


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MonitorError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_monitor(text: str, proxied: bool = False) -> MonitoredServer:
    """``KIND=HOST:PORT[,metrics=HOST:PORT][,management=HOST:PORT][,proxy]``."""
    kind, _, rest = text.partition("=")
    if kind not in KINDS:
        raise MonitorError(f"--monitor {text!r}: KIND must be one of {', '.join(KINDS)}")
    api, *options = rest.split(",")
    host, port = _host_port(api, f"--monitor {kind}")
    given: dict[str, str] = {}
    for option in options:
        if option == "proxy":
            proxied = True
            continue
        key, _, value = option.partition("=")
        allowed = {"torchserve": ("metrics", "management"), PROXY_ONLY: ()}.get(
            kind, ("metrics",))
        if key not in allowed:
            raise MonitorError(f"--monitor {kind}: unknown option {option!r}; "
                               f"{kind} takes {', '.join((*allowed, 'proxy'))}")
        _host_port(value, f"--monitor {kind} {key}")
        given[key] = value
    api = address(port, host)
    if kind == PROXY_ONLY:
        return MonitoredServer(kind, api, None, api, proxied=True)
    known = KNOWN_SERVERS[kind]
    # vLLM serves /metrics on its API port, wherever that is; the others on a port of their own.
    metrics_port = port if known.port == known.api_port else known.port
    management = (address(known.management_port, host) if known.management_port is not None
                  else api)
    return MonitoredServer(kind, api, given.get("metrics") or address(metrics_port, host),
                           given.get("management") or management, proxied=proxied)


def parse_monitors(texts: Sequence[str], proxy: bool = False) -> list[MonitoredServer]:
    """Every ``--monitor``; ``proxy`` (``--proxy``) puts the proxy before the only one."""
    if proxy and len(texts) != 1:
        raise MonitorError("--proxy needs exactly one --monitor; with several, add `,proxy` "
                           "to the one to put the proxy before")
    servers = [parse_monitor(text, proxy) for text in texts]
    kinds = [s.kind for s in servers if s.kind != PROXY_ONLY]
    if len(set(kinds)) != len(kinds):
        raise MonitorError("one --monitor per kind of server: each kind is one scrape job")
    if sum(s.proxied for s in servers) > 1:
        raise MonitorError("the stack runs one proxy: only one --monitor can have it")
    return servers


def discover(server: MonitoredServer, models: Sequence[str] = (),
             wait: float = 0.0) -> MonitoredServer:
    """``server`` with its models: ``models`` when given, else the ones it lists."""
    if not models:
        try:
            models = tuple(discover_models(f"http://{server.models_at}", wait=wait))
        except DiscoveryError as exc:
            raise MonitorError(f"{server.kind}: {exc}") from None
    return replace(server, models=tuple(models))


def monitored_slos(servers: Iterable[MonitoredServer], path: Path | None = None) -> list[SLO]:
    """An SLO per model (see ``slo.slos_for``), without the objectives its series cannot
    measure: an alert that can never evaluate would look like a met objective."""
    servers = list(servers)
    slos = []
    for slo in slos_for((m for s in servers for m in s.models), path):
        serving = [s for s in servers if slo.model in s.models]
        slos.append(slo.measurable(
            errors=any(s.measures(ERRORS_TOTAL) for s in serving),
            latency_histogram=any(s.measures(f"{LATENCY_SECONDS}_bucket")
                                  for s in serving),
            first_token=any(s.measures(f"{TIME_TO_FIRST_TOKEN_SECONDS}_bucket")
                            for s in serving),
            inter_token=any(s.measures(f"{INTER_TOKEN_LATENCY_SECONDS}_bucket")
                            for s in serving)))
    return slos


def monitored_servers(texts: Sequence[str] | None, proxy: bool, models: Sequence[str],
                      slo: Path | None, console: Console
                      ) -> tuple[list[MonitoredServer], list[SLO] | None]:
    """The servers of the ``--monitor`` ``texts`` with their models, and SLOs for those models;
    it prints what it found. Without ``texts``: none, and the SLOs of ``slo`` (None: the
    built-in file's, for the built-in service)."""
    if not texts:
        if proxy:
            raise MonitorError("--proxy needs --monitor")
        return [], None if slo is None else load_slos(slo)
    servers = [discover(s, models) for s in parse_monitors(texts, proxy)]
    for note in coverage_notes(servers):
        console.print(f"[yellow]note:[/] {note}")
    slos = monitored_slos(servers, slo)
    for s in servers:
        console.print(f"monitoring {s.kind} at {s.api} (metrics: {s.metrics or 'the proxy'}); "
                      f"models: {', '.join(s.models)}")
    return servers, slos


def coverage_notes(servers: Iterable[MonitoredServer]) -> list[str]:
    """What each server's own series cannot give, for the operator to read at start."""
    notes = []
    for s in servers:
        if s.proxied or s.native is None:
            continue
        missing = [(series, slo) for record, series, slo in (
            (ERRORS_TOTAL, "per-model errors", "availability"),
            (f"{LATENCY_SECONDS}_bucket", "latency histogram", "latency"),
        ) if not s.measures(record)]
        if missing:
            notes.append(
                f"{s.native.title}'s own metrics have no {' nor '.join(m[0] for m in missing)}:"
                f" no {' or '.join(m[1] for m in missing)} SLO for {', '.join(s.models)}; "
                "--proxy adds them (docs/proxy.md)")
    return notes


def check_metrics(server: MonitoredServer, timeout: float = 5.0) -> None:
    """Refuse to start a stack whose scrape of ``server`` would only be a down target."""
    target = server.metrics_url
    if target is None:
        return
    try:
        status = httpx.get(target, timeout=timeout).status_code
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        if status == 200:
            return
        problem = f"HTTP {status}"
    raise MonitorError(f"{server.kind} metrics at {target}: {problem}. "
                       f"{_METRICS_HINTS[server.kind]}; name the address with "
                       f"--monitor {server.kind}={server.api},metrics=HOST:PORT")
