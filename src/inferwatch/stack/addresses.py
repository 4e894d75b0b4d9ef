"""Where the stack's components listen: bind addresses, URLs and free ports."""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = [
    "HOST",
    "StackPorts",
    "address",
    "connect_host",
    "free_ports",
    "is_loopback",
    "url",
]

HOST = "127.0.0.1"  # the default bind address of every component, and always the admin API's


def connect_host(bind: str) -> str:
    """Where a client on this machine reaches a listener bound to ``bind``."""
    if bind in ("", "0.0.0.0"):
        return HOST
    if bind == "::":
        return "::1"
    return bind


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def address(port: int, host: str = HOST) -> str:
    """``host:port``, with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url(port: int, host: str = HOST) -> str:
    return f"http://{address(port, host)}"


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (outgoing connections, bind to 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now, below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` is in the range it also hands to outgoing
    connections: between choosing it and a child binding it, any client (a scrape, a load
    generator) may take it as its local port. Ports below the range are only taken by
    listeners that ask for them.
    """
    low, _ = _ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    candidates = list(range(floor, low))
    random.SystemRandom().shuffle(candidates)
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == n:
                break
            s = socket.socket()
            try:
                s.bind((HOST, port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        if len(sockets) < n:
            raise OSError(f"fewer than {n} free ports in {floor}-{low - 1}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class StackPorts:
    service: int = 8080
    prometheus: int = 9090
    alertmanager: int = 9093
    node_exporter: int = 9100
    inbox: int = 9095
    dashboard: int = 9096
    admin: int = 9097
    pushgateway: int = 9091
    store: int = 9190  # the long-term store receiving remote_write, with --replicas only
    proxy: int = 8090  # `inferwatch proxy` before a monitored server, with --proxy only
    # With --ha only: the second Prometheus, two more Alertmanagers, and the three
    # Alertmanagers' gossip ports (always on 127.0.0.1).
    prometheus_b: int = 9290
    alertmanager_b: int = 9193
    alertmanager_c: int = 9293
    alertmanager_cluster: int = 9094
    alertmanager_b_cluster: int = 9194
    alertmanager_c_cluster: int = 9294

    @classmethod
    def free(cls) -> StackPorts:
        """Ports the kernel has free right now (for tests and parallel stacks)."""
        return cls(*free_ports(len(fields(cls))))

    def busy(self, skip: Collection[str] = (), bind: str = HOST) -> list[tuple[str, int]]:
        """The (component, port) pairs that something already listens on; every component
        binds ``bind``, except the admin API and Alertmanager's gossip: 127.0.0.1."""
        taken = []
        for f in fields(self):
            if f.name in skip:
                continue
            port = getattr(self, f.name)
            host = HOST if f.name == "admin" or f.name.endswith("_cluster") else bind
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    taken.append((f.name, port))
        return taken
