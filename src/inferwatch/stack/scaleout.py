"""Scale-out on one machine: replicas discovered through ``file_sd``, and a second, "global"
Prometheus that receives ``remote_write`` from the first, standing in for Thanos Receive or
Mimir.

The replica set's Prometheus keeps the local stack's jobs, rules and alerts; only its
``inference`` job reads its targets from a JSON file that Prometheus watches, so adding or
removing a replica is rewriting that file. Its ``external_labels`` are attached to every
series it writes to the global one: they say which cluster and replica set a series came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferwatch.stack.config import (
    HOST,
    StackPorts,
    address,
    render_prometheus_config,
    url,
    write_yaml,
)
from inferwatch.stack.profiles import Profile
from inferwatch.stack.webconfig import BasicAuth

__all__ = [
    "GLOBAL_CONFIG",
    "TARGETS_FILE",
    "external_labels",
    "render_global_prometheus_config",
    "render_replica_prometheus_config",
    "write_scaleout_config",
    "write_targets",
]

TARGETS_FILE = "targets/inference.json"  # relative to prometheus.yml
GLOBAL_CONFIG = "global/prometheus.yml"


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
    config["remote_write"] = [{
        "name": "global",
        "url": f"{url(ports.global_prometheus, host)}/api/v1/write",
        "queue_config": {"batch_send_deadline": profile.remote_write_deadline},
        **({"basic_auth": auth.client_config()} if auth else {}),
    }]
    return config


def render_global_prometheus_config(profile: Profile) -> dict[str, Any]:
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
                          auth: BasicAuth | None = None) -> dict[str, Path]:
    """Replace the stack's ``prometheus.yml`` with the replica set's, and write the targets
    and the global Prometheus' configuration beside it."""
    return {
        "prometheus": write_yaml(directory / "prometheus.yml", render_replica_prometheus_config(
            profile, ports, cluster, replica_set, host, auth)),
        "targets": write_targets(directory / TARGETS_FILE, service_ports, host),
        "global_prometheus": write_yaml(directory / GLOBAL_CONFIG,
                                        render_global_prometheus_config(profile)),
    }
