"""High availability on one machine: two identical Prometheus servers and a cluster of three
Alertmanagers, as kube-prometheus-stack runs them with ``replicas: 2`` and ``replicas: 3``.

Both Prometheus servers scrape the same targets, evaluate the same rules and differ only in
their ``prometheus_replica`` external label. That label is dropped where the two copies must
meet as one: in the alerts they send (so each Alertmanager sees one alert, not two) and in what
they remote-write (so the store keeps one series and deduplicates the two copies of each sample
with ``-dedup.minScrapeInterval``). Either server may die: the other still pages and writes.

Each Prometheus sends every alert to all three Alertmanagers; the three gossip the
notifications they have sent, and an Alertmanager waits its position in the cluster times
``--cluster.peer-timeout`` before sending what a peer may already have sent. So a page goes
out once, from whichever is first, and still goes out when one of them is gone. The gossip
port has no authentication: it listens on 127.0.0.1 whatever the stack's bind address.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from inferwatch.stack.addresses import HOST, address

__all__ = [
    "ALERTMANAGERS",
    "PROMETHEUS_SERVERS",
    "REPLICA_LABEL",
    "cluster_flags",
    "render_ha_prometheus_config",
]

REPLICA_LABEL = "prometheus_replica"  # kube-prometheus-stack's replicaExternalLabelName
# (component name, replica label value); the first is the one the dashboard and doctor read.
PROMETHEUS_SERVERS = (("prometheus", "a"), ("prometheus-b", "b"))
ALERTMANAGERS = ("alertmanager", "alertmanager-b", "alertmanager-c")

_DROP_REPLICA = {"action": "labeldrop", "regex": REPLICA_LABEL}


def render_ha_prometheus_config(config: dict[str, Any], replica: str,
                                prometheus: Sequence[str], alertmanagers: Sequence[str]
                                ) -> dict[str, Any]:
    """One HA replica's configuration from the single server's ``config``: ``prometheus``
    and ``alertmanagers`` are the ``host:port`` of every member, scraped and alerted."""
    config = copy.deepcopy(config)
    config["global"]["external_labels"][REPLICA_LABEL] = replica
    alerting = config["alerting"]
    alerting["alert_relabel_configs"] = [_DROP_REPLICA]
    for target in alerting["alertmanagers"]:
        target["static_configs"] = [{"targets": list(alertmanagers)}]
    members = {"prometheus": prometheus, "alertmanager": alertmanagers}
    for job in config["scrape_configs"]:
        if job["job_name"] in members:
            job["static_configs"] = [{"targets": list(members[job["job_name"]])}]
    for remote in config.get("remote_write", ()):
        remote["write_relabel_configs"] = [_DROP_REPLICA]
    return config


def cluster_flags(index: int, cluster_ports: Sequence[int], peer_timeout: str) -> list[str]:
    """Alertmanager ``index``'s gossip flags: it listens on, and advertises, 127.0.0.1 (an
    explicit address: Alertmanager refuses to guess one on loopback) and knows the others."""
    own = address(cluster_ports[index], HOST)
    return [f"--cluster.listen-address={own}", f"--cluster.advertise-address={own}",
            *(f"--cluster.peer={address(port, HOST)}"
              for i, port in enumerate(cluster_ports) if i != index),
            f"--cluster.peer-timeout={peer_timeout}"]
