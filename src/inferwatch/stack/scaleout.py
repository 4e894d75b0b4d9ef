"""Scale-out on one machine: replicas discovered through ``file_sd``, and a long-term store
that receives ``remote_write`` from the replica set's Prometheus: VictoriaMetrics (single-node)
by default, or a second Prometheus standing in for Thanos Receive or Mimir.

The replica set's Prometheus keeps the local stack's jobs, rules and alerts; only its
``inference`` job reads its targets from a JSON file that Prometheus watches, so adding or
removing a replica is rewriting that file. Its ``external_labels`` are attached to every
series it writes to the store: they say which cluster and replica set a series came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from inferwatch.stack.addresses import HOST, StackPorts, address, url
from inferwatch.stack.config import render_prometheus_config
from inferwatch.stack.profiles import Profile
from inferwatch.stack.webconfig import BasicAuth
from inferwatch.stack.yamlfile import write_yaml

__all__ = [
    "STORES",
    "STORE_CONFIG",
    "TARGETS_FILE",
    "Store",
    "check_retention",
    "external_labels",
    "render_replica_prometheus_config",
    "render_store_prometheus_config",
    "store_remote_write",
    "write_scaleout_config",
    "write_targets",
]

TARGETS_FILE = "targets/inference.json"  # relative to prometheus.yml
STORE_CONFIG = "store/prometheus.yml"  # the Prometheus store's; VictoriaMetrics needs none

Store = Literal["victoria-metrics", "prometheus"]
STORES: tuple[Store, ...] = ("victoria-metrics", "prometheus")
# Units both stores read alike: VictoriaMetrics' -retentionPeriod takes h, d, w, y (a bare
# number is months) and Prometheus' --storage.tsdb.retention.time takes them too.
_RETENTION = re.compile(r"[1-9][0-9]*[hdwy]")


def check_retention(retention: str) -> str:
    """``retention`` when both stores read it the same way.

    >>> check_retention("90d")
    '90d'
    """
    if not _RETENTION.fullmatch(retention):
        raise ValueError(f"store retention {retention!r}: a whole number of hours, days, weeks "
                         "or years, such as 90d or 1y")
    return retention


def external_labels(cluster: str, replica_set: str) -> dict[str, str]:
    return {"stack": "inferwatch", "cluster": cluster, "replica_set": replica_set}


def render_replica_prometheus_config(profile: Profile, ports: StackPorts, cluster: str,
                                     replica_set: str, host: str = HOST,
                                     auth: BasicAuth | None = None) -> dict[str, Any]:
    """``auth``: both Prometheus servers require it, so remote_write sends it too."""
    config = render_prometheus_config(profile, ports, host=host, auth=auth)
    config["global"]["external_labels"] = external_labels(cluster, replica_set)
    for job in config["scrape_configs"]:
        if job["job_name"] == "inference":
            del job["static_configs"]
            # Prometheus watches the file (inotify) and also re-reads it at this interval.
            job["file_sd_configs"] = [{"files": [TARGETS_FILE],
                                       "refresh_interval": profile.scrape_interval}]
    config["remote_write"] = [store_remote_write(profile, ports, host, auth)]
    return config


def store_remote_write(profile: Profile, ports: StackPorts, host: str = HOST,
                       auth: BasicAuth | None = None) -> dict[str, Any]:
    """A writer's ``remote_write`` entry for the store; both kinds take the same path."""
    return {
        "name": "store",
        "url": f"{url(ports.store, host)}/api/v1/write",
        "queue_config": {"batch_send_deadline": profile.remote_write_deadline},
        **({"basic_auth": auth.client_config()} if auth else {}),
    }


def render_store_prometheus_config(profile: Profile) -> dict[str, Any]:
    """A receiver only: it scrapes nothing and stores what the replica sets write to it."""
    return {"global": {"evaluation_interval": profile.evaluation_interval},
            "scrape_configs": []}


def write_targets(path: Path, service_ports: Sequence[int], host: str = HOST) -> Path:
    """The ``file_sd`` target list; written to a temporary file and renamed, so Prometheus
    never reads half a file."""
    targets = [{"targets": [address(port, host) for port in service_ports]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(targets, indent=2) + "\n")
    partial.replace(path)
    return path


def write_scaleout_config(directory: Path, profile: Profile, ports: StackPorts,
                          service_ports: Sequence[int], cluster: str = "local",
                          replica_set: str = "inferwatch", host: str = HOST,
                          auth: BasicAuth | None = None,
                          store: Store = "victoria-metrics") -> dict[str, Path]:
    """Replace the stack's ``prometheus.yml`` with the replica set's, and write the targets
    and, for a Prometheus store, its configuration beside it."""
    paths = {
        "prometheus": write_yaml(directory / "prometheus.yml", render_replica_prometheus_config(
            profile, ports, cluster, replica_set, host, auth)),
        "targets": write_targets(directory / TARGETS_FILE, service_ports, host),
    }
    if store == "prometheus":
        paths["store"] = write_yaml(directory / STORE_CONFIG,
                                    render_store_prometheus_config(profile))
    return paths
